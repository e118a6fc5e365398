"""Learning-rate schedule and AdamW optimizer, matching the reference trainer step for step.

Conventions of the reference (`cycle_vae_impl/entrypoints/train_cycle_vae.py`), which we keep:
- Its loop counter `step` counts MICRO-batches: `num_train_steps` and `warmup_steps` are in
  micro-batches. Before micro-batch `step` it sets lr = get_lr(step) (so the very first
  micro-batch already uses get_lr(0) = lr / warmup, never lr 0), divides the loss by
  `gradient_accumulation_steps` A (micro-batch gradients are AVERAGED), and after micro-batch
  `step` with (step + 1) % A == 0 it clips the accumulated gradient and calls AdamW once.
  Optimizer update j (0-based) therefore uses get_lr(j * A + A - 1). With A = 1 that is
  get_lr(j): the first update uses get_lr(0).
- Micro-batches left over after the last full group of A are never applied.
- One parameter group over all parameters: weight decay applies to EVERYTHING, biases, norm
  scales, embeddings and hyper-connection parameters included. We use no decay mask.
- 'adam' and 'adamw' both build torch.optim.AdamW (decoupled decay); so do we.
- Clipping is torch.nn.utils.clip_grad_norm_, whose scale is min(1, c / (norm + 1e-6)).
"""

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

LR_SCHEDULES = ('constant', 'linear', 'cosine')
OPTIMIZERS = ('adamw', 'adam')
# Cosine decays to this fraction of the peak learning rate, as in the reference.
COSINE_FINAL_FRACTION = 0.1
# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
TORCH_CLIP_EPS = 1e-6


def _bad(key: str, value: Any, why: str) -> ValueError:
  return ValueError(f'config.{key}={value!r}: {why}')


def _as_float(config_section: Any, key: str) -> float:
  value = config_section[key.split('.')[-1]]
  if isinstance(value, bool):
    raise _bad(key, value, 'expected a number')
  try:
    return float(value)
  except (TypeError, ValueError):
    raise _bad(key, value, 'expected a number') from None


def _as_int(config_section: Any, key: str, minimum: int) -> int:
  value = config_section[key.split('.')[-1]]
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise _bad(key, value, f'expected an integer >= {minimum}')
  return value


def _peak_lr(config: Any) -> float:
  lr = _as_float(config.optimizer, 'optimizer.lr')
  if not math.isfinite(lr) or lr < 0:
    raise _bad('optimizer.lr', lr, 'expected a finite number >= 0')
  return lr


def _schedule_name(config: Any) -> str:
  # The reference lower-cases the name before comparing.
  name = str(config.training.lr_schedule).lower()
  if name not in LR_SCHEDULES:
    raise _bad('training.lr_schedule', config.training.lr_schedule,
               f'expected one of {LR_SCHEDULES}')
  return name


def learning_rate_schedule(config: Any) -> optax.Schedule:
  """The reference's get_lr as a jit-safe function of the MICRO-batch index `step`.

  Linear warmup lr * (step + 1) / warmup for step < warmup (when warmup > 0), then constant,
  linear decay to 0, or cosine decay to 10% of the peak over the remaining
  num_train_steps - warmup steps (no decay at all when num_train_steps <= warmup).
  Under gradient accumulation the optimizer does not call this directly: `make_optimizer`
  evaluates it at the micro-batch index of the last micro-batch of each update.
  """
  peak = _peak_lr(config)
  name = _schedule_name(config)
  warmup = _as_int(config.training, 'training.warmup_steps', 0)
  total = _as_int(config.training, 'training.num_train_steps', 0)
  decay_steps = max(1, total - warmup)
  # Static (config-time) branch, as in the reference: nothing decays when warmup uses it all.
  decays = name != 'constant' and total > warmup

  def schedule(step: chex.Numeric) -> chex.Array:
    step = jnp.asarray(step)
    # Offsets stay integer so large step counts lose no precision before the division.
    warm_lr = peak * (step + 1).astype(jnp.float32) / max(warmup, 1)
    progress = (step - warmup).astype(jnp.float32) / decay_steps
    if not decays:
      after_lr = jnp.full(step.shape, peak, jnp.float32)
    elif name == 'linear':
      # 1 - progress, written with the integer steps left so that it is exactly 0 at the end.
      steps_left = (total - step).astype(jnp.float32)
      after_lr = peak * jnp.maximum(0.0, steps_left / decay_steps)
    else:
      cosine = (1.0 + jnp.cos(jnp.pi * progress)) / 2.0
      after_lr = peak * (COSINE_FINAL_FRACTION + (1.0 - COSINE_FINAL_FRACTION) * cosine)
    if warmup == 0:
      return after_lr
    return jnp.where(step < warmup, warm_lr, after_lr)

  return schedule


def clip_by_global_norm_like_torch(max_norm: float) -> optax.GradientTransformation:
  """torch.nn.utils.clip_grad_norm_: scale every gradient by min(1, max_norm / (norm + 1e-6)).

  optax.clip_by_global_norm omits the 1e-6, so it differs slightly right at the threshold.
  """

  def init_fn(params: optax.Params) -> optax.EmptyState:
    del params
    return optax.EmptyState()

  def update_fn(updates: optax.Updates,
                state: optax.EmptyState,
                params: optax.Params | None = None) -> tuple[optax.Updates, optax.EmptyState]:
    del params
    norm = optax.global_norm(updates)
    scale = jnp.minimum(1.0, max_norm / (norm + TORCH_CLIP_EPS))
    return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _clip_norm(config: Any) -> float | None:
  """The clipping threshold, or None when clipping is off (0 or None).

  The reference always calls clip_grad_norm_, and with 0 that zeroes every gradient; we read 0
  as "off" instead. A negative threshold would flip the gradients in torch; we refuse it.
  """
  value = config.optimizer.grad_clip_norm
  if value is None:
    return None
  norm = _as_float(config.optimizer, 'optimizer.grad_clip_norm')
  if not norm >= 0:  # Also catches NaN.
    raise _bad('optimizer.grad_clip_norm', value, 'expected a number >= 0 (0 or None = off)')
  return norm if norm > 0 else None


def _adamw_settings(config: Any) -> dict[str, float]:
  opt = config.optimizer
  name = str(opt.name).lower()
  if name not in OPTIMIZERS:
    raise _bad('optimizer.name', opt.name, f'expected one of {OPTIMIZERS}')
  b1 = _as_float(opt, 'optimizer.beta1')
  b2 = _as_float(opt, 'optimizer.beta2')
  eps = _as_float(opt, 'optimizer.eps')
  weight_decay = _as_float(opt, 'optimizer.weight_decay')
  # The same ranges torch.optim.AdamW accepts.
  for key, value in (('optimizer.beta1', b1), ('optimizer.beta2', b2)):
    if not 0.0 <= value < 1.0:
      raise _bad(key, value, 'expected 0 <= beta < 1')
  for key, value in (('optimizer.eps', eps), ('optimizer.weight_decay', weight_decay)):
    if not 0.0 <= value < math.inf:
      raise _bad(key, value, 'expected a finite number >= 0')
  return dict(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """AdamW with torch-style global-norm clipping and gradient accumulation, as the reference.

  Call `update` once per micro-batch with that micro-batch's gradient. With
  gradient_accumulation_steps A > 1 the result is wrapped in optax.MultiSteps: gradients are
  averaged over A micro-batches (the reference divides each loss by A), and only every A-th call
  clips and applies AdamW; the other calls return zero updates. The inner AdamW counts UPDATES j,
  which we translate to the reference's micro-batch index j * A + A - 1 for the schedule.
  """
  micro_lr = learning_rate_schedule(config)
  accumulation = _as_int(config.training, 'training.gradient_accumulation_steps', 1)
  clip_norm = _clip_norm(config)

  def update_lr(update_count: chex.Numeric) -> chex.Array:
    return micro_lr(update_count * accumulation + accumulation - 1)

  # No decay mask: the reference decays all parameters.
  adamw = optax.adamw(learning_rate=update_lr, eps_root=0.0, **_adamw_settings(config))
  # Clipping sees the averaged gradient of the whole accumulation group, before Adam.
  inner = adamw if clip_norm is None else optax.chain(
      clip_by_global_norm_like_torch(clip_norm), adamw)
  if accumulation == 1:
    return inner
  return optax.MultiSteps(inner, every_k_schedule=accumulation,
                          use_grad_mean=True).gradient_transformation()
