"""Fine-tune config: the cycle objective on top of pretrained weights (converted from the PyTorch
reference with convert_torch_weights.py), following the reference's own advice for reusing
pretrained T2L weights (see get_config).

Use: python -m lgdlm_jax.main --config configs/finetune.py:converted/ref --workdir runs/ft \
       --config.data.token_dir=... --config.data.latent_dir=...

The argument after the colon is init_from, the weights to start from; it is required. The model
sizes are the cluster config's (the reference's cluster YAML): init_from checks every parameter's
shape against them and names the keys that differ, so set --config.model.X=... to match other
weights. A resumed run (same --workdir) continues from its own checkpoint instead.
"""

import ml_collections

from configs import cluster

# The review leaves N open: 10% of the run.
CYCLE_RAMP_STEPS = 2000


def get_config(init_from: str = '') -> ml_collections.ConfigDict:
  if not init_from:
    raise ValueError(
      'configs/finetune.py needs the weights to start from: --config configs/finetune.py:DIR '
      '(a directory written by convert_torch_weights.py)'
    )
  config = cluster.get_config()
  config.init_from = init_from
  # The reference's advice "if you are reusing pretrained T2L weights trained with the stable
  # trainer" (its review cycle_vae_impl/review/mmdit_l2t_t2l_compat.md, section 5):
  # - latent_t_mode 'full': those weights were trained at latent t = 1 only, and random t would
  #   shift the distribution they see (the review rates this mismatch "high" risk);
  # - cycle weights started small, 0.1, and ramped in from 0 (warmup 0, ramp N): the pretrained
  #   objective had no cycle terms, so they enter as new regularisers, slowly;
  # - cycle_latent_t_max 0.90 (RUNBOOK_CLUSTER.md's stability knob; no effect while latent_t_mode is
  #   'full', it bounds the t range of a later switch to 'random');
  # - the cycle-text gradient stopped at the round-1 latent (cycle_stop_grad_latent, the default).
  config.loss.update(
    latent_t_mode='full',
    cycle_text_weight=0.1,
    cycle_text_warmup_steps=0,
    cycle_text_ramp_steps=CYCLE_RAMP_STEPS,
    cycle_latent_weight=0.1,
    cycle_latent_warmup_steps=0,
    cycle_latent_ramp_steps=CYCLE_RAMP_STEPS,
    cycle_latent_t_max=0.90,
    cycle_stop_grad_latent=True,
  )
  # AdamW starts with fresh moments on weights that are already good: the reference's cluster
  # learning rate after a short warmup keeps the first updates small. The moving average (0.999,
  # about the last 1,000 updates) and the best checkpoints by validation loss are what a
  # fine-tune is judged by; evaluation and the samplers use the moving average.
  config.training.update(
    num_train_steps=20_000,
    warmup_steps=500,
    eval_every=500,
    save_every=1000,
    ema_decay=0.999,
    keep_best_checkpoints=2,
    best_checkpoint_metric='val_loss',
  )
  return config
