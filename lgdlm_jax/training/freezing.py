"""The parameters each latentDLM mode leaves alone, and an AdamW that leaves them exactly as they were.

    frozen = frozen_units(params, 'l2t')      # {path: bool array}, static, one per program
    optimizer.update(grads, opt_state, params, frozen=frozen)

The reference (docs/reference.md, "Frozen parameters") freezes the latent group in l2t and the text
group in t2l; torch then gives those tensors, and every tensor the loss does not reach, grad None, and
its AdamW skips a tensor without a gradient entirely: no decay, no moment update, no step count, so
each tensor's bias correction counts its own updates. Here:
- groups: the reference's name substrings on the parameter path (`parameter_group`);
- unreached: in l2t the latent stream after the last block's joint attention (its attention output,
  feed-forward, their residual connections' post-branch parameters, its final norm) and the latent
  head; in t2l the same on the text side; the cluster head (never in any loss) always;
- the blocks' parameters are stacked along a leading block axis, so a tensor of the reference is a
  slice of one leaf here: freezing, and the update counts, are per block slice (lgdlm_jax.model.units).
The train step zeroes the frozen gradients before clipping (so the global norm is torch's over the
tensors with gradients), and `freezable_adamw` keeps a frozen unit's moments and count and gives it a
zero update, decay included. A mode compiles its own program, so the frozen set is a constant of it.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgdlm_jax.model import units as model_units

# The reference's groups, by lower-cased name substring; the text list is checked first.
TEXT_GROUP = ('text_embed', 'text_head', 'vocab', 'token_embed', 'text_proj', 'text_norm', 'text_out', 'text_encoder')
LATENT_GROUP = (
  'latent_proj',
  'latent_head',
  'latent_embed',
  'latent_norm',
  'latent_out',
  'latent_linear',
  'latent_encoder',
)
FROZEN_GROUPS = {'unconditional': (), 'l2t': ('latent',), 't2l': ('text',)}
# The modality (0 = text, 1 = latent) whose output a mode's loss never reads.
UNREAD_MODALITY = {'unconditional': None, 'l2t': 1, 't2l': 0}
# A residual connection's parameters that act after its branch (the depth connection).
POST_BRANCH = ('static_beta', 'dynamic_beta_fn', 'h_post_scale')


def parameter_group(path: tuple[str, ...]) -> str:
  """'text', 'latent' or 'shared', by the reference's substring rule on the parameter's name."""
  name = '/'.join(path).lower()
  if any(part in name for part in TEXT_GROUP):
    return 'text'
  if any(part in name for part in LATENT_GROUP):
    return 'latent'
  return 'shared'


def _unread_in_last_block(path: tuple[str, ...], modality: int) -> bool:
  """A block parameter that only modality `modality`'s own stream reads after the joint attention."""
  name = '/'.join(path[len(model_units.BLOCKS_PATH) :])
  after_attention = (f'joint_attn/to_out_{modality}', f'ff_layernorms_{modality}/', f'feedforwards_{modality}/')
  return (
    any(name.startswith(prefix) for prefix in after_attention)
    or name.startswith(f'ff_residual_fns_{modality}/')
    or (name.startswith(f'attn_residual_fns_{modality}/') and path[-1] in POST_BRANCH)
  )


def frozen_units(params: Any, mode: str) -> Any:
  """{path: numpy bool array of `unit_shape`} (as the params' tree): True where `mode` leaves the unit alone."""
  modality = UNREAD_MODALITY[mode]
  head = {0: 'text_head', 1: 'latent_head'}.get(modality, '')
  frozen = {}
  for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(params)).items():
    shape = model_units.unit_shape(path, leaf.shape)
    units = np.full(shape, parameter_group(path) in FROZEN_GROUPS[mode])
    name = '/'.join(path)
    if name.startswith('text_head_clusters') or (head and name.startswith(head)):
      units[...] = True
    elif modality is not None and name.startswith(f'mmdit/norms_{modality}/'):
      units[...] = True
    elif modality is not None and shape and _unread_in_last_block(path, modality):
      units[-1] = True
    frozen[path] = units
  return flax.traverse_util.unflatten_dict(frozen)


def zero_frozen(grads: Any, frozen: Any) -> Any:
  """The gradient with every frozen unit set to 0 (a non-finite value there included)."""
  return jax.tree.map(lambda g, f: jnp.where(f, jnp.zeros_like(g), g), grads, frozen)


class FreezableAdamState(NamedTuple):
  """count: updates applied (the learning rate's step); unit_count: each unit's own updates (its bias
  correction); mu, nu: the moments."""

  count: jax.Array
  unit_count: Any
  mu: Any
  nu: Any


def freezable_adamw(
  learning_rate: Callable[[jax.Array], jax.Array], b1: float, b2: float, eps: float, weight_decay: float
) -> optax.GradientTransformationExtraArgs:
  """torch.optim.AdamW with per-unit step counts; `update(..., frozen=tree)` skips the frozen units."""

  def init_fn(params: Any) -> FreezableAdamState:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    counts = flax.traverse_util.unflatten_dict(
      {p: jnp.zeros(model_units.unit_shape(p, x.shape), jnp.int32) for p, x in flat.items()}
    )
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return FreezableAdamState(jnp.zeros((), jnp.int32), counts, zeros(), zeros())

  def update_fn(updates: Any, state: FreezableAdamState, params: Any = None, *, frozen: Any = None, **extra):
    del extra
    if frozen is None:
      frozen = jax.tree.map(lambda c: np.zeros(c.shape, bool), state.unit_count)
    lr = learning_rate(state.count)

    def one(g, p, c, m, v, f):
      c_new = jnp.where(f, c, c + 1)
      m_new = jnp.where(f, m, b1 * m + (1.0 - b1) * g)
      v_new = jnp.where(f, v, b2 * v + (1.0 - b2) * jnp.square(g))
      steps = c_new.astype(jnp.float32)
      m_hat = m_new / (1.0 - b1**steps)
      v_hat = v_new / (1.0 - b2**steps)
      update = -lr * (m_hat / (jnp.sqrt(v_hat) + eps) + weight_decay * p)
      return jnp.where(f, jnp.zeros_like(update), update).astype(g.dtype), c_new, m_new, v_new

    out = jax.tree.map(one, updates, params, state.unit_count, state.mu, state.nu, frozen)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], updates, out)
    return pick(0), FreezableAdamState(state.count + 1, pick(1), pick(2), pick(3))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
