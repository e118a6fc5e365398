"""Cluster config: the reference's `mmdit_cycle_vae_cluster.yaml` (H=1024, 24 blocks, C=1024, S=4096,
D=32, R=2, bfloat16 compute, AdamW lr 5e-5, cosine after 2000 warmup steps, both cycle terms on),
with the objective the reference itself recommends for a first real run (see get_config) instead of
that YAML's cycle weights of 1.0 from step 0.
Meant for a TPU slice of 8 chips (e.g. v5e-8): parameters and AdamW state fully sharded over the 8
chips (mesh.fsdp=8), one sequence per chip (global batch 8; the reference ran 4 per GPU), every
matmul output of the MMDiT blocks kept for the backward pass (remat 'dots': nothing but the cheap
elementwise work is recomputed), the gradient taken pass by pass (training.round_gradients
'auto' = sequential here), attention chosen for the platform at start-up (model.attention='auto':
the splash kernel on TPU, cuDNN on GPU), float32 residual streams. On another slice set
--config.mesh.fsdp to its chip count (or fewer, the rest then split the data) and the batch to a
multiple of the chip count.

Why 'dots' fits a v5e chip (16 GiB): the gradient is taken one model pass at a time, so the step
holds one pass's activations (one backward pass through all four passes holds all of theirs, and
does not fit). 2 sequences per chip (global batch 16) fit too, with every matmul output kept. The
README's "Attention backends and ahead-of-time compiles" section has the figures, by the TPU
compiler's own memory analysis.

Check that a variant fits before renting the slice (README, "Check a config before renting"):
    python -m lgdlm_jax.bench --compile_only --topology v5e:2x4 --config configs/cluster.py

Use: python -m lgdlm_jax.main --config configs/cluster.py --workdir DIR \
       --config.data.token_dir=... --config.data.latent_dir=...

`configs/cluster.py:packed`, for sentence data: packed rows (data.packing), up to
PACKED_SEGMENTS_PER_ROW sentences per 4096-token row, each with its own latent, the L2T loss over
real tokens only with the length head (loss.text_positions='valid', model.length_head). K = 256:
rows of 8 x 4096 tokens hold 0.1% padding with K >= 160 on OpenWebText-like sentences (mean 31
tokens) and with K = 256 on the demo's shorter ones (mean 19; 26% padding at K = 160), by
`benchmarks.packing`'s length distributions; the K latent tokens add 6% to a row's tokens.
"""

import ml_collections

from lgdlm_jax import config as config_lib

# The review leaves N open: 5% of the run, the first 2,000 of them inside the learning-rate warmup.
CYCLE_RAMP_STEPS = 5000
PACKED_SEGMENTS_PER_ROW = 256
VARIANTS = ('', 'packed')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """The cluster config; variant 'packed' (configs/cluster.py:packed) packs sentences into rows."""
  if variant not in VARIANTS:
    raise ValueError(f'configs/cluster.py:{variant}: unknown variant; expected one of {", ".join(map(repr, VARIANTS))}')
  config = config_lib.default_config()
  config.model.update(
    hidden_size=1024,
    n_blocks=24,
    cond_dim=1024,
    max_seq_len=4096,
    latent_dim=32,
    num_residual_streams=2,
    dropout=0.1,
    dtype='bfloat16',
    remat_policy='dots',
  )
  config.data.update(max_samples=2_000_000, num_workers=8)
  config.training.update(
    train_batch_size=8,
    eval_batch_size=8,
    num_train_steps=100_000,
    lr_schedule='cosine',
    warmup_steps=2000,
    log_every=100,
    save_every=1000,
    eval_every=1000,
  )
  # The reference's advice for a first real run (its review cycle_vae_impl/review/mmdit_l2t_t2l_compat.md,
  # section 5, and RUNBOOK_CLUSTER.md's stability knobs), which its cluster YAML does not follow:
  # - latent_t_mode 'full': T2L trains at latent t = 1, as the reference's stable trainer did, so
  #   T2L weights trained there see the timestep they know (random t is a distribution shift);
  # - the cycle terms are new regularisers that can destabilise training: start them small (0.1,
  #   not 1.0) and ramp them in from 0 over CYCLE_RAMP_STEPS instead of switching them on at full
  #   weight at step 0 (the review's warmup 0, ramp N);
  # - cycle_latent_t_max 0.90 (the runbook's knob): it has no effect while latent_t_mode is 'full'
  #   (every latent t is 1), and keeps a later switch to 'random' (the review: "only after stable
  #   training") away from the noisiest timesteps.
  # The cycle-text gradient stays stopped at the round-1 latent (cycle_stop_grad_latent, default).
  config.loss.update(
    latent_t_mode='full',
    cycle_text_weight=0.1,
    cycle_text_warmup_steps=0,
    cycle_text_ramp_steps=CYCLE_RAMP_STEPS,
    cycle_latent_weight=0.1,
    cycle_latent_warmup_steps=0,
    cycle_latent_ramp_steps=CYCLE_RAMP_STEPS,
    cycle_latent_t_max=0.90,
  )
  config.optimizer.update(lr=5e-5, weight_decay=0.01, beta1=0.9, beta2=0.95, grad_clip_norm=0.5)
  config.mesh.fsdp = 8
  if variant == 'packed':
    config.data.update(packing=True, max_segments_per_row=PACKED_SEGMENTS_PER_ROW)
    config.loss.text_positions = 'valid'
    config.model.length_head = True
  return config
