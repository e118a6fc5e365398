"""Residual connections of the MMDiT: manifold-constrained hyper-connections (R >= 2) or a plain add.

Reproduces `hyper_connections.mHCv2.ManifoldConstrainedHyperConnections` as mmdit 0.3.0 builds it
(one input view, one fraction, one dynamic-alpha proposal, 20 Sinkhorn rounds, no dropout).
A residual function is used in two halves around a branch (attention or feed-forward):

    branch_input, state = residual.width(streams)
    streams = residual.depth(branch_output, state)

Streams are [B, N, R, H] for R >= 2 and plain [B, N, H] for R = 1. The width and depth
connections are computed in float32, as the reference does, and cast back to the streams' dtype.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgdlm_jax.model import layers

SINKHORN_ITERS = 20


def sinkhorn(log_alpha: jax.Array, iters: int = SINKHORN_ITERS) -> jax.Array:
  """Doubly-stochastic projection over the last two axes (mHCv2.sinkhorn_knopps).

  The max is subtracted over axis -2 (not the global max) and normalisation alternates axis -2
  then axis -1, exactly as the reference, because the result after finitely many rounds depends
  on that order.
  """
  log_alpha = log_alpha.astype(jnp.float32)
  alpha = jnp.exp(log_alpha - jax.lax.stop_gradient(jnp.max(log_alpha, axis=-2, keepdims=True)))

  def one_round(_, a):
    a = layers.l1_normalize(a, axis=-2)
    return layers.l1_normalize(a, axis=-1)

  # 4 rounds per loop iteration: unrolling all of them multiplies the train step's compile time
  # (README, "What moved the CPU figure"), while one per iteration makes the loop long.
  return jax.lax.fori_loop(0, iters, one_round, alpha, unroll=4)


class PlainResidual(nn.Module):
  """R = 1: the branch sees the residual as is, and its output is added back."""

  def width(self, streams: jax.Array) -> tuple[jax.Array, Any]:
    return streams, streams

  def depth(self, branch_output: jax.Array, state: Any) -> jax.Array:
    return branch_output.astype(state.dtype) + state


def _static_alpha_init(num_streams: int):
  """[one-hot row | identity]: the branch reads one stream, residual mixing starts as identity.

  The reference picks that stream uniformly at random per residual function
  (`randrange(num_streams)`), so we draw it from the init key.
  """

  def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    del shape
    index = jax.random.randint(key, (), 0, num_streams)
    pre = jax.nn.one_hot(index, num_streams, dtype=dtype)[:, None]
    return jnp.concatenate([pre, jnp.eye(num_streams, dtype=dtype)], axis=1)

  return init


class ManifoldHyperConnection(nn.Module):
  """mHC residual over R streams; parameter names and shapes follow mHCv2's state dict."""

  num_streams: int
  dim: int

  def setup(self):
    r, h = self.num_streams, self.dim
    constant = nn.initializers.constant
    self.static_alpha = self.param('static_alpha', _static_alpha_init(r), (r, 1 + r))
    self.dynamic_alpha_fn = self.param('dynamic_alpha_fn', nn.initializers.zeros, (1, h, 1 + r))
    self.pre_branch_scale = self.param('pre_branch_scale', constant(1e-2), (1,))
    self.residual_scale = self.param('residual_scale', constant(1e-2), (1,))
    self.static_beta = self.param('static_beta', nn.initializers.ones, (r, 1, 1))
    self.dynamic_beta_fn = self.param('dynamic_beta_fn', nn.initializers.zeros, (h, 1))
    self.h_post_scale = self.param('h_post_scale', constant(1e-2), ())
    self.norm = _StreamNorm(name='norm')

  def width(self, streams_BxNxRxH: jax.Array) -> tuple[jax.Array, Any]:
    """Returns the branch input [B,N,H] and the state the depth connection needs."""
    r = self.num_streams
    dtype = streams_BxNxRxH.dtype
    x = streams_BxNxRxH.astype(jnp.float32)
    normed = self.norm(x)

    # Dynamic plus static mixing logits: column 0 feeds the branch, columns 1.. the new streams.
    dynamic = jnp.einsum('bnrh,hm->bnrm', normed, self.dynamic_alpha_fn[0])
    scale = jnp.concatenate([self.pre_branch_scale, jnp.repeat(self.residual_scale, r)])
    alpha = dynamic * scale + self.static_alpha
    mix = jnp.concatenate([jax.nn.sigmoid(alpha[..., :1]), sinkhorn(alpha[..., 1:])], axis=-1)

    # mixed[t] = sum_s mix[s, t] * x[s], t = 0..R.
    mixed = jnp.einsum('bnst,bnsh->bnth', mix, x)
    branch_input, new_streams = mixed[:, :, 0], mixed[:, :, 1:]

    # Per-stream weight of the branch output, in (0, 2) ("H_post" constraint).
    beta_logit = (normed @ self.dynamic_beta_fn)[..., 0] * self.h_post_scale
    beta_BxNxR = 2.0 * jax.nn.sigmoid(beta_logit + self.static_beta[:, 0, 0])
    return branch_input.astype(dtype), (new_streams.astype(dtype), beta_BxNxR.astype(dtype))

  def depth(self, branch_output_BxNxH: jax.Array, state: Any) -> jax.Array:
    new_streams, beta_BxNxR = state
    out = branch_output_BxNxH.astype(jnp.float32)[:, :, None, :] * beta_BxNxR.astype(jnp.float32)[..., None]
    return out.astype(new_streams.dtype) + new_streams


class _StreamNorm(nn.Module):
  """mHCv2.RMSNorm: l2-normalise * sqrt(dim) * (gamma + 1), gamma initialised to 0."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    gamma = self.param('gamma', nn.initializers.zeros, (dim,))
    return layers.l2_normalize(x) * math.sqrt(dim) * (gamma + 1.0)


def residual_function(num_streams: int, dim: int, name: str) -> nn.Module:
  """The residual function mmdit uses for R streams: mHC for R >= 2, a plain add for R = 1."""
  if num_streams == 1:
    return PlainResidual(name=name)
  return ManifoldHyperConnection(num_streams=num_streams, dim=dim, name=name)


def expand_streams(x_BxNxH: jax.Array, num_streams: int) -> jax.Array:
  """Copies each modality into R identical streams before the first block (no-op for R = 1)."""
  if num_streams == 1:
    return x_BxNxH
  return jnp.repeat(x_BxNxH[:, :, None, :], num_streams, axis=2)


def reduce_streams(streams: jax.Array, num_streams: int) -> jax.Array:
  """Sums the streams after the last block (no-op for R = 1)."""
  if num_streams == 1:
    return streams
  return jnp.sum(streams, axis=2)
