"""Learning-rate schedule and optimizer against the reference's get_lr and torch.optim.AdamW."""

from collections.abc import Callable
from typing import Any

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch

from lgdlm_jax import config as config_lib
from lgdlm_jax.reference import lr as reference_lr
from lgdlm_jax.training import optimizer as optimizer_lib


def _config(**overrides: Any) -> ml_collections.ConfigDict:
  """The finalized default config with these optimizer settings; overrides are 'section__key' names."""
  config = config_lib.default_config()
  config.training.update(lr_schedule='constant', warmup_steps=0, num_train_steps=10, gradient_accumulation_steps=1)
  config.optimizer.update(name='adamw', lr=0.05, weight_decay=0.01, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip_norm=0.0)
  for name, value in overrides.items():
    section, key = name.split('__')
    with config[section].ignore_type():
      config[section][key] = value
  return config_lib.finalize(config)


class LearningRateScheduleTest(parameterized.TestCase):
  @parameterized.product(
    schedule=('constant', 'linear', 'cosine', 'Cosine'),
    warmup_and_total=((0, 50), (7, 50), (50, 50), (60, 50), (2000, 100000)),
  )
  def test_matches_reference_get_lr_at_every_step(self, schedule, warmup_and_total):
    warmup, total = warmup_and_total
    config = _config(
      training__lr_schedule=schedule, training__warmup_steps=warmup, training__num_train_steps=total, optimizer__lr=5e-5
    )
    steps = np.arange(total + 3) if total < 1000 else np.r_[0:2100, total - 100 : total + 3]
    ours = np.asarray(jax.jit(optimizer_lib.learning_rate_schedule(config))(jnp.asarray(steps)))
    expected = np.array([reference_lr.get_lr(config, int(s)) for s in steps])
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=0)

  def test_first_step_uses_warmup_value_not_zero(self):
    config = _config(training__warmup_steps=4, optimizer__lr=1.0)
    self.assertAlmostEqual(float(optimizer_lib.learning_rate_schedule(config)(0)), 0.25)


def _torch_reference_run(
  config: ml_collections.ConfigDict,
  params: dict[str, np.ndarray],
  coefficients: list[dict[str, np.ndarray]],
  clip_zero_means_off: bool = True,
  divide_loss: bool = True,
) -> dict[str, np.ndarray]:
  """The reference training loop (train_cycle_vae.py) on the loss sum(c * p**2 + c * p).

  One loop iteration per micro-batch: lr = get_lr(step) on every param group, (loss / A)
  backward, and every A-th micro-batch clip_grad_norm_ + AdamW step + zero_grad. The one
  departure, `clip_zero_means_off`, skips clip_grad_norm_(..., 0), which in torch zeroes grads.
  """
  torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
  opt = config.optimizer
  adamw = torch.optim.AdamW(
    list(torch_params.values()),
    lr=float(opt.lr),
    betas=(float(opt.beta1), float(opt.beta2)),
    eps=float(opt.eps),
    weight_decay=float(opt.weight_decay),
  )
  accumulation = int(config.training.gradient_accumulation_steps)
  adamw.zero_grad(set_to_none=True)
  for step, coefficient in enumerate(coefficients):
    for group in adamw.param_groups:
      group['lr'] = reference_lr.get_lr(config, step)
    loss = sum(torch.sum(torch.tensor(coefficient[k]) * (p**2 + p)) for k, p in torch_params.items())
    (loss / accumulation if divide_loss else loss).backward()
    if (step + 1) % accumulation == 0:
      if float(opt.grad_clip_norm) > 0 or not clip_zero_means_off:
        torch.nn.utils.clip_grad_norm_(list(torch_params.values()), float(opt.grad_clip_norm))
      adamw.step()
      adamw.zero_grad(set_to_none=True)
  return {k: p.detach().numpy() for k, p in torch_params.items()}


def _loss(params: dict[str, jax.Array], coefficient: dict[str, jax.Array]) -> jax.Array:
  return sum(jnp.sum(coefficient[k] * (p**2 + p)) for k, p in params.items())


def _inputs(num_micro_steps: int, seed: int = 0) -> tuple[dict, list[dict]]:
  rng = np.random.default_rng(seed)
  shapes = {'w': (3, 4), 'b': (4,), 'norm_scale': (5,)}
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  # Growing, varying magnitudes so that clipping changes Adam's result, not only its scale.
  coefficients = [
    {k: (rng.normal(size=s) * (1 + step)).astype(np.float32) for k, s in shapes.items()}
    for step in range(num_micro_steps)
  ]
  return params, coefficients


# name, config overrides, number of micro-batches.
PARITY_CASES = (
  ('constant_no_clip', dict(), 5),
  (
    'cosine_warmup_clip_active',
    dict(
      training__lr_schedule='cosine',
      training__warmup_steps=2,
      training__num_train_steps=5,
      optimizer__grad_clip_norm=0.5,
    ),
    5,
  ),
  (
    'linear_clip_inactive',
    dict(training__lr_schedule='linear', training__num_train_steps=5, optimizer__grad_clip_norm=1e4),
    5,
  ),
  (
    'accumulate_2_clip_warmup',
    dict(
      training__lr_schedule='cosine',
      training__warmup_steps=3,
      training__num_train_steps=10,
      training__gradient_accumulation_steps=2,
      # Clips the later, larger averaged gradients only.
      optimizer__grad_clip_norm=30.0,
    ),
    10,
  ),
  (
    'accumulate_2_large_eps',
    dict(
      training__lr_schedule='linear',
      training__warmup_steps=4,
      training__num_train_steps=10,
      training__gradient_accumulation_steps=2,
      optimizer__eps=1.0,
      optimizer__weight_decay=0.1,
    ),
    10,
  ),
  (
    'accumulate_3_leftover_dropped',
    dict(training__gradient_accumulation_steps=3, optimizer__grad_clip_norm=1.0, optimizer__name='adam'),
    8,
  ),
)


def _run_ours(
  config: ml_collections.ConfigDict,
  params: dict[str, np.ndarray],
  coefficients: list[dict[str, np.ndarray]],
  wrap: Callable[[Callable], Callable] = lambda fn: fn,
) -> dict[str, np.ndarray]:
  """Our optimizer on the same loss, one `update` call per micro-batch."""
  tx = optimizer_lib.make_optimizer(config)

  @wrap
  def train_step(params, opt_state, coefficient):
    grads = jax.grad(_loss)(params, coefficient)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params = jax.tree.map(jnp.asarray, params)
  opt_state = tx.init(params)
  for coefficient in coefficients:
    params, opt_state = train_step(params, opt_state, jax.tree.map(jnp.asarray, coefficient))
  return jax.tree.map(np.asarray, params)


class TorchParityTest(chex.TestCase, parameterized.TestCase):
  # Eager MultiSteps costs seconds per call (op-by-op lax.cond), so parity runs jitted only.
  @chex.variants(with_jit=True)
  @parameterized.named_parameters(*PARITY_CASES)
  def test_params_match_torch_adamw(self, overrides, num_micro_steps):
    config = _config(**overrides)
    params, coefficients = _inputs(num_micro_steps)
    ours = _run_ours(config, params, coefficients, wrap=self.variant)
    expected = _torch_reference_run(config, params, coefficients)
    for key in params:
      np.testing.assert_allclose(ours[key], expected[key], atol=1e-6, rtol=0, err_msg=key)
    # The run must have moved the parameters, or the comparison proves nothing.
    self.assertGreater(np.abs(ours['w'] - params['w']).max(), 1e-3)

  @parameterized.named_parameters(
    ('clipping', 'cosine_warmup_clip_active', dict(optimizer__grad_clip_norm=0.0), {}),
    ('accumulation_clip_sum_vs_mean', 'accumulate_2_clip_warmup', {}, dict(divide_loss=False)),
    ('accumulation_eps_sum_vs_mean', 'accumulate_2_large_eps', {}, dict(divide_loss=False)),
  )
  def test_parity_cases_are_sensitive(self, case, config_change, run_change):
    """The parity cases above tell clipping on/off and mean/sum accumulation apart."""
    overrides, num_micro_steps = {name: (o, n) for name, o, n in PARITY_CASES}[case]
    params, coefficients = _inputs(num_micro_steps)
    baseline = _torch_reference_run(_config(**overrides), params, coefficients)
    changed = _torch_reference_run(_config(**{**overrides, **config_change}), params, coefficients, **run_change)
    self.assertGreater(max(np.abs(baseline[k] - changed[k]).max() for k in params), 1e-4)

  def test_torch_zero_clip_norm_zeroes_gradients(self):
    """Documents the reference defect we do not copy: clip 0 leaves only weight decay."""
    config = _config(optimizer__grad_clip_norm=0.0, optimizer__weight_decay=0.0)
    params, coefficients = _inputs(3)
    reference = _torch_reference_run(config, params, coefficients, clip_zero_means_off=False)
    np.testing.assert_array_equal(reference['w'], params['w'])
    ours = _run_ours(config, params, coefficients, wrap=jax.jit)
    self.assertGreater(np.abs(ours['w'] - params['w']).max(), 1e-3)

  def test_accumulation_applies_updates_only_every_kth_call(self):
    config = _config(training__gradient_accumulation_steps=2)
    params, coefficients = _inputs(3)
    one = _run_ours(config, params, coefficients[:1], wrap=jax.jit)
    np.testing.assert_array_equal(one['w'], params['w'])
    two = _run_ours(config, params, coefficients[:2], wrap=jax.jit)
    self.assertGreater(np.abs(two['w'] - params['w']).max(), 1e-3)


class TorchClipTest(parameterized.TestCase):
  @parameterized.parameters(1e-4, 1.0001e-4, 5e-5, 1.0, 0.0)
  def test_matches_clip_grad_norm(self, max_norm):
    """Includes norms at the threshold, where torch's + 1e-6 still scales by about 0.99."""
    rng = np.random.default_rng(1)
    grads = {k: rng.normal(size=s).astype(np.float32) for k, s in (('a', (3, 4)), ('b', (7,)))}
    norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
    grads = {k: g * np.float32(1e-4 / norm) for k, g in grads.items()}  # Global norm 1e-4.
    torch_grads = {k: torch.nn.Parameter(torch.zeros(g.shape)) for k, g in grads.items()}
    for k, p in torch_grads.items():
      p.grad = torch.tensor(grads[k])
    torch.nn.utils.clip_grad_norm_(list(torch_grads.values()), max_norm)
    tx = optimizer_lib.clip_by_global_norm_like_torch(max_norm)
    ours, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(grads))
    for k in grads:
      np.testing.assert_allclose(ours[k], torch_grads[k].grad.numpy(), rtol=1e-6, atol=1e-12)


class BadConfigTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ('schedule', dict(training__lr_schedule='step'), 'training.lr_schedule'),
    ('optimizer_name', dict(optimizer__name='sgd'), 'optimizer.name'),
    ('negative_lr', dict(optimizer__lr=-1e-4), 'optimizer.lr'),
    ('nan_lr', dict(optimizer__lr=float('nan')), 'optimizer.lr'),
    ('beta1', dict(optimizer__beta1=1.0), 'optimizer.beta1'),
    ('beta2', dict(optimizer__beta2=-0.1), 'optimizer.beta2'),
    ('eps', dict(optimizer__eps=-1e-8), 'optimizer.eps'),
    ('weight_decay', dict(optimizer__weight_decay=-0.01), 'optimizer.weight_decay'),
    ('clip', dict(optimizer__grad_clip_norm=-1.0), 'optimizer.grad_clip_norm'),
    ('accumulation', dict(training__gradient_accumulation_steps=0), 'training.gradient_accumulation_steps'),
    ('warmup', dict(training__warmup_steps=-1), 'training.warmup_steps'),
    ('total', dict(training__num_train_steps=-5), 'training.num_train_steps'),
  )
  def test_raises_naming_the_key(self, overrides, key):
    with self.assertRaisesRegex(ValueError, key.replace('.', r'\.')):
      optimizer_lib.make_optimizer(_config(**overrides))

  def test_warmup_longer_than_training_is_fine(self):
    config = _config(training__warmup_steps=20, training__num_train_steps=10, training__lr_schedule='cosine')
    optimizer_lib.make_optimizer(config)
    self.assertAlmostEqual(float(optimizer_lib.learning_rate_schedule(config)(19)), 0.05, 6)

  def test_clip_none_and_zero_mean_off(self):
    params, coefficients = _inputs(4)
    runs = {
      clip: _run_ours(_config(optimizer__grad_clip_norm=clip), params, coefficients, wrap=jax.jit)
      for clip in (None, 0.0, 0.5)
    }
    np.testing.assert_array_equal(runs[None]['w'], runs[0.0]['w'])
    self.assertGreater(np.abs(runs[0.0]['w'] - runs[0.5]['w']).max(), 1e-4)


if __name__ == '__main__':
  absltest.main()
