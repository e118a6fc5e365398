"""Numerical building blocks shared by the model: exact GELU, norms, torch-style linear layers.

Each helper reproduces one PyTorch primitive the reference uses, with the same constants, so the
Flax model matches it to float32 rounding. Norm statistics are always computed in float32.
"""

from collections.abc import Callable
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# torch.nn.LayerNorm's default; the reference never changes it. 1e-6 (Flax's default) is a known pitfall.
LAYER_NORM_EPS = 1e-5
# torch.nn.functional.normalize clamps the norm from below by this value.
NORMALIZE_EPS = 1e-12


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as torch.nn.GELU() with its default approximate='none'.

  jax.nn.gelu defaults to the tanh approximation, which differs by up to ~5e-4.
  """
  return jax.nn.gelu(x, approximate=False)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = NORMALIZE_EPS) -> jax.Array:
  """torch.nn.functional.normalize(x, p=2, eps=eps): x / max(||x||, eps).

  Written with rsqrt of the clamped squared norm so the gradient at x = 0 stays finite.
  """
  sum_sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sum_sq, eps**2))


def l1_normalize(x: jax.Array, axis: int) -> jax.Array:
  """torch.nn.functional.normalize(x, p=1): x / max(sum |x|, 1e-12)."""
  return x / jnp.maximum(jnp.sum(jnp.abs(x), axis=axis, keepdims=True), NORMALIZE_EPS)


def layer_norm(x: jax.Array, eps: float = LAYER_NORM_EPS) -> jax.Array:
  """LayerNorm without affine parameters over the last axis, in float32 (biased variance)."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nn.Module):
  """torch.nn.LayerNorm(dim) with affine weight ('scale') and bias, eps 1e-5, float32 statistics."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (dim,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (dim,), jnp.float32)
    return (layer_norm(x) * scale + bias).astype(self.dtype)


class RMSNorm(nn.Module):
  """x_transformers.RMSNorm: l2-normalise, times sqrt(dim), times a learned gain `g` (init 1)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    g = self.param('g', nn.initializers.ones, (dim,), jnp.float32)
    return l2_normalize(x.astype(jnp.float32)) * math.sqrt(dim) * g


def _torch_uniform(fan_in: int) -> Callable[..., jax.Array]:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch.nn.Linear's default init of weight and bias."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_linear(
  features: int,
  fan_in: int,
  *,
  name: str,
  dtype: Dtype,
  use_bias: bool = True,
  kernel_init: Callable[..., jax.Array] | None = None,
  bias_init: Callable[..., jax.Array] | None = None,
  dot_general: Callable[..., jax.Array] | None = None,
) -> nn.Dense:
  """A Dense layer initialised like torch.nn.Linear(fan_in, features).

  Kernel layout is [in, out] (the transpose of torch's weight); parameters are float32 and the
  matmul runs in `dtype` (dot_general: e.g. one with preferred_element_type for a wider output).
  """
  return nn.Dense(
    features,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=kernel_init or _torch_uniform(fan_in),
    bias_init=bias_init or _torch_uniform(fan_in),
    precision=None,
    dot_general=dot_general,
    name=name,
  )


# The reference's init of its output heads and position embeddings.
normal_002 = nn.initializers.normal(stddev=0.02)
