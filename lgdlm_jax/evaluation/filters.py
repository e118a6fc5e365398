"""Truncations of a token distribution before sampling: top-k, top-p (nucleus) and min-p.

    logits_BxSxV = filter_logits(logits_BxSxV, top_k=50, top_p=0.9, min_p=0.05)   # -inf outside the kept set

They apply in that order, each to the distribution the previous one left (renormalised), as
transformers' logits processors do; every filter keeps the most probable token, so no row is
ever left empty. top_k = 0, top_p = 1 and min_p = 0 keep everything. Ties at the k-th logit
are all kept.
"""

import jax
import jax.numpy as jnp

from lgdlm_jax.errors import ConfigError


def check_filters(top_k: int, top_p: float, min_p: float) -> None:
  """ConfigError naming the first value out of range."""
  if top_k < 0:
    raise ConfigError(f'top_k={top_k}: must be >= 0 (0 = no top-k)')
  if not 0.0 < top_p <= 1.0:
    raise ConfigError(f'top_p={top_p}: must be in (0, 1] (1 = no top-p)')
  if not 0.0 <= min_p <= 1.0:
    raise ConfigError(f'min_p={min_p}: must be in [0, 1] (0 = no min-p)')


def top_k_filter(logits_NxV: jax.Array, k: int) -> jax.Array:
  """Keep the k largest logits of each row (all of them tied with the k-th)."""
  if k <= 0 or k >= logits_NxV.shape[-1]:
    return logits_NxV
  kth_Nx1 = jax.lax.top_k(logits_NxV, k)[0][..., -1:]
  return jnp.where(logits_NxV >= kth_Nx1, logits_NxV, -jnp.inf)


def top_p_filter(logits_NxV: jax.Array, p: float) -> jax.Array:
  """Keep the smallest set of most probable tokens whose probability reaches p."""
  if p >= 1.0:
    return logits_NxV
  probs_NxV = jax.nn.softmax(logits_NxV, axis=-1)
  order_NxV = jnp.argsort(-probs_NxV, axis=-1, stable=True)
  sorted_NxV = jnp.take_along_axis(probs_NxV, order_NxV, axis=-1)
  # A token is kept while the mass of the tokens before it is still below p (the first always is).
  before_NxV = jnp.cumsum(sorted_NxV, axis=-1) - sorted_NxV
  keep_sorted_NxV = before_NxV < p
  keep_NxV = (
    jnp.zeros_like(keep_sorted_NxV).at[jnp.arange(logits_NxV.shape[0])[:, None], order_NxV].set(keep_sorted_NxV)
  )
  return jnp.where(keep_NxV, logits_NxV, -jnp.inf)


def min_p_filter(logits_NxV: jax.Array, min_p: float) -> jax.Array:
  """Keep the tokens at least min_p times as probable as the most probable one."""
  if min_p <= 0.0:
    return logits_NxV
  probs_NxV = jax.nn.softmax(logits_NxV, axis=-1)
  threshold_Nx1 = min_p * jnp.max(probs_NxV, axis=-1, keepdims=True)
  return jnp.where(probs_NxV >= threshold_Nx1, logits_NxV, -jnp.inf)


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> jax.Array:
  """logits [..., V] with -inf outside what top-k, then top-p, then min-p keep."""
  check_filters(top_k, top_p, min_p)
  if top_k == 0 and top_p >= 1.0 and min_p <= 0.0:
    return logits
  rows_NxV = logits.reshape(-1, logits.shape[-1])
  rows_NxV = min_p_filter(top_p_filter(top_k_filter(rows_NxV, top_k), top_p), min_p)
  return rows_NxV.reshape(logits.shape)
