"""A PyTorch run continued in lgdlm_jax lands where the PyTorch run itself lands.

The reference's loop (its twin loss, torch.optim.AdamW, clip_grad_norm_, get_lr set before every
micro-batch) trains N micro-batches and saves its run directory the reference's way; the converter
turns it into a converted directory with the AdamW moments and step; lgdlm_jax's train step
continues M micro-batches from it (init_from with init_from_optimizer), while the PyTorch run
continues M micro-batches itself, both fed the same batches and the same random draws. float32,
highest matmul precision.
"""

import dataclasses

import jax
import numpy as np
import pytest
import torch

import convert_torch_weights
from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.checkpoints import init_from
from lgdlm_jax.convert import moments
from lgdlm_jax.objective import draws as draws_lib
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.reference import checkpoints as reference_checkpoints
from lgdlm_jax.reference import cycle_loss
from lgdlm_jax.reference import lr as reference_lr
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step as train
from tests.helpers import models
from tests.helpers import params as params_lib

N, M = 3, 3  # micro-batches before the hand-over, and after it
BATCH = 4
TOL = 1e-5  # relative, per parameter array: max |jax - torch| / max |torch|


def make_config(**model_overrides):
  config = config_lib.default_config()
  config.model.update(
    dict(
      models.tiny_config(
        hidden_size=32, n_blocks=1, cond_dim=32, max_seq_len=12, num_residual_streams=1, **model_overrides
      ).items()
    )
  )
  config.tokenizer.update(vocab_size=config.model.vocab_size, mask_token_id=3, pad_token_id=0)
  config.training.update(
    train_batch_size=BATCH, num_train_steps=N + M, lr_schedule='cosine', warmup_steps=2, eval_every=0
  )
  config.optimizer.update(lr=3e-3, weight_decay=0.01, beta1=0.9, beta2=0.95, grad_clip_norm=1.0)
  config.loss.update(cycle_latent_weight=0.5)  # all four terms
  return config


def batches(config, count: int) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(7)
  out = []
  for _ in range(count):
    seq_len = config.model.max_seq_len
    lengths = rng.integers(seq_len // 2, seq_len + 1, BATCH)
    out.append(
      {
        'input_ids': rng.integers(0, config.model.vocab_size, (BATCH, seq_len)).astype(np.int32),
        'attention_mask': np.arange(seq_len)[None] < lengths[:, None],
        'latent': rng.standard_normal((BATCH, config.model.latent_dim)).astype(np.float32),
      }
    )
  return out


def jax_draws(config, step_key, step: int) -> dict[str, np.ndarray]:
  """The draws lgdlm_jax's train step makes at `step` (fold_in of its key with the step)."""
  draws = draws_lib.sample_draws(
    jax.random.fold_in(step_key, step), BATCH, config.model.latent_dim, options_lib.from_config(config)
  )
  return {k: np.asarray(draws[k]) for k in ('t_lat', 'noise', 't_lat2', 'noise2')}


def torch_micro_batch(trainer, adamw, config, batch, draws, step: int, tables) -> float:
  """One iteration of the reference's loop (gradient accumulation 1); returns the lr it used."""
  lr = reference_lr.get_lr(config, step)  # pylint: disable=protected-access
  for group in adamw.param_groups:
    group['lr'] = lr
  torch_batch = {
    'input_ids': torch.from_numpy(batch['input_ids']).long(),
    'attention_mask': torch.from_numpy(batch['attention_mask']),
    'latent': torch.from_numpy(batch['latent']),
  }
  loss, _ = cycle_loss.cycle_vae_loss(
    trainer.model,
    torch_batch,
    {k: torch.tensor(v) for k, v in draws.items()},
    step,
    config.loss,
    config.tokenizer.mask_token_id,
    config.model.latent_parameterization,
    tables,
  )
  loss.backward()
  torch.nn.utils.clip_grad_norm_(trainer.parameters(), config.optimizer.grad_clip_norm)
  adamw.step()
  adamw.zero_grad(set_to_none=True)
  return lr


@pytest.mark.slow  # one compiled train step (about 10 s on 2 cores) and 2 x (N + M) PyTorch micro-batches
def test_pytorch_run_continued_in_lgdlm_jax_matches_pytorch_continuing(tmp_path):
  config = make_config()
  config.update(init_from=str(tmp_path / 'converted'), init_from_optimizer=True)
  config = config_lib.finalize(config)
  model_config = config.model
  step_key = jax.random.split(jax.random.key(config.training.seed), 3)[1]  # the loop's step key
  data = batches(config, N + M)
  draws = [jax_draws(config, step_key, s) for s in range(N + M)]
  tables = models.torch_noise_tables(model_config)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # torch's and XLA's threads fight for the 2 cores otherwise
  try:
    torch_model, _ = models.build_pair(model_config, seed=5)
    trainer = reference_checkpoints.CycleTrainer(torch_model)
    adamw = torch.optim.AdamW(
      trainer.parameters(),
      lr=config.optimizer.lr,
      eps=config.optimizer.eps,
      betas=(config.optimizer.beta1, config.optimizer.beta2),
      weight_decay=config.optimizer.weight_decay,
    )
    for s in range(N):
      torch_micro_batch(trainer, adamw, config, data[s], draws[s], s, tables)
    # The reference saves after micro-batch N - 1 with step N - 1.
    reference_checkpoints.save_cycle_run(
      tmp_path / 'ref_run', trainer, adamw, N - 1, reference_checkpoints.cycle_cfg(model_config)
    )
    torch_lrs = [torch_micro_batch(trainer, adamw, config, data[s], draws[s], s, tables) for s in range(N, N + M)]
  finally:
    torch.set_num_threads(threads)

  argv = ['--input', str(tmp_path / 'ref_run'), '--output', str(tmp_path / 'converted')]
  assert convert_torch_weights.main(argv) == 0
  initial = init_from.load(config, str(tmp_path / 'jax_run'))
  model = model_lib.MultimodalMMDiT(model_config)
  optimizer = optimizer_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config)
  fresh, shardings = train.create_sharded_state(config, model, optimizer, mesh, jax.random.key(0))
  fresh = jax.device_get(fresh)  # host copies, so that each state below gets buffers of its own to donate
  state = init_from.apply(initial, fresh, shardings)
  assert int(state.step) == N
  with jax.default_matmul_precision('highest'):
    programs = train.compile_steps(config, model, optimizer, mesh, shardings)[0]

    def continue_from(state):
      lrs = []
      for s in range(N, N + M):
        state, metrics = programs.for_terms(programs.schedule.terms_at(s))(state, data[s], step_key)
        lrs.append(float(metrics['lr']))
      return state, lrs

    state, lrs = continue_from(state)
    np.testing.assert_allclose(lrs, torch_lrs, rtol=1e-6)
    errors = params_lib.relative_errors(jax.device_get(state.params), torch_model, model_config)
    assert max(errors.values()) <= TOL, sorted(errors.items(), key=lambda kv: -kv[1])[:5]

    # The comparison can fail: the same weights and step with the moments started afresh land elsewhere.
    zeros = jax.tree_util.tree_map(np.zeros_like, initial.weights.moments.mu)
    restarted = dataclasses.replace(initial.weights, moments=moments.AdamMoments(0, zeros, zeros, {}))
    no_moments, _ = continue_from(init_from.apply(init_from.Initial(restarted, with_optimizer=True), fresh, shardings))
  errors = params_lib.relative_errors(jax.device_get(no_moments.params), torch_model, model_config)
  assert max(errors.values()) > 100 * TOL
