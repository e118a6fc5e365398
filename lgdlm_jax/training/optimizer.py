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

from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from lgdlm_jax.training import freezing

# Cosine decays to this fraction of the peak learning rate, as in the reference.
COSINE_FINAL_FRACTION = 0.1
# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
TORCH_CLIP_EPS = 1e-6


def learning_rate_schedule(config: Any) -> optax.Schedule:
  """The reference's get_lr as a jit-safe function of the MICRO-batch index `step`.

  Linear warmup lr * (step + 1) / warmup for step < warmup (when warmup > 0), then constant,
  linear decay to 0, or cosine decay to 10% of the peak over the remaining
  num_train_steps - warmup steps (no decay at all when num_train_steps <= warmup).
  Under gradient accumulation the optimizer does not call this directly: `make_optimizer`
  evaluates it at the micro-batch index of the last micro-batch of each update.
  """
  peak = config.optimizer.lr
  name = config.training.lr_schedule
  warmup = config.training.warmup_steps
  total = config.training.num_train_steps
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

  def update_fn(
    updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.EmptyState]:
    del params
    norm = optax.global_norm(updates)
    scale = jnp.minimum(1.0, max_norm / (norm + TORCH_CLIP_EPS))
    return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """AdamW with torch-style global-norm clipping and gradient accumulation, as the reference.

  Call `update` once per micro-batch with that micro-batch's gradient. With
  gradient_accumulation_steps A > 1 the result is wrapped in optax.MultiSteps: gradients are
  averaged over A micro-batches (the reference divides each loss by A), and only every A-th call
  clips and applies AdamW; the other calls return zero updates. The inner AdamW counts UPDATES j,
  which we translate to the reference's micro-batch index j * A + A - 1 for the schedule.
  """
  micro_lr = learning_rate_schedule(config)
  accumulation = config.training.gradient_accumulation_steps
  # The reference always clips, and with 0 that zeroes every gradient; 0 or None means off here.
  clip_norm = config.optimizer.grad_clip_norm or None
  opt = config.optimizer

  def update_lr(update_count: chex.Numeric) -> chex.Array:
    return micro_lr(update_count * accumulation + accumulation - 1)

  if config.loss.loss_type != 'cycle_vae':
    # latentDLM's modes freeze parameters per step (no accumulation there; config validation says so).
    adam = freezing.freezable_adamw(update_lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay)
    return adam if clip_norm is None else optax.chain(clip_by_global_norm_like_torch(clip_norm), adam)
  # No decay mask: the reference decays all parameters.
  adamw = optax.adamw(
    learning_rate=update_lr, b1=opt.beta1, b2=opt.beta2, eps=opt.eps, eps_root=0.0, weight_decay=opt.weight_decay
  )
  # Clipping sees the averaged gradient of the whole accumulation group, before Adam.
  inner = adamw if clip_norm is None else optax.chain(clip_by_global_norm_like_torch(clip_norm), adamw)
  if accumulation == 1:
    return inner
  return optax.MultiSteps(inner, every_k_schedule=accumulation, use_grad_mean=True).gradient_transformation()
