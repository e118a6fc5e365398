"""Softmax attention in O(S) memory, in pure JAX: an online softmax over key blocks, with its own VJP.

    out_BxQxHxD = attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, kv_ids_BxK, q_ids_BxQ=None, block_size=512)

The forward pass scans over blocks of `block_size` keys, carrying each query's running maximum,
normaliser and weighted sum of values (float32); the backward pass scans over the same blocks
again, recomputing each block's weights from the saved log-sum-exp. Neither pass ever holds more
than one [B, H, Q, block_size] block of scores, so memory grows linearly with the sequence, where
the plain computation holds [B, H, Q, K] several times over.

Which keys a query sees is given by segment ids, never by a [Q, K] mask: without query ids, every
query sees the keys with id > 0 (unpacked rows: valid keys 1, padding 0); with query ids (packed
rows), query i sees key j iff their ids are equal. Each block's mask is built inside its iteration
from the block's [B, block_size] ids, behind an optimisation barrier tied to the loop carry: left
loop-invariant, XLA hoists the mask of every block out of the loop at once, an S x S buffer.
Every query row needs at least one key it sees (the model's latent token, or the query itself).

Rounding follows the plain computation: scores and the softmax in float32, the weights cast to the
compute dtype (the dtype of q, k, v) for the matmul with the values, accumulated in float32.
"""

import functools

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

# The name of the residuals the backward pass needs (output and log-sum-exp), as the splash kernel
# names its own: a remat policy that saves this name keeps the forward from being recomputed.
RESIDUAL_NAME = 'attention_residuals'


def _blocks(x_BxKx: jax.Array, block_size: int) -> jax.Array:
  """[B, K, ...] -> [K / block, B, block, ...] (K already a multiple of block_size)."""
  b, k = x_BxKx.shape[:2]
  return jnp.moveaxis(x_BxKx.reshape(b, k // block_size, block_size, *x_BxKx.shape[2:]), 1, 0)


def _unblocks(x_NxBxCx: jax.Array) -> jax.Array:
  """The inverse of _blocks."""
  n, b, c = x_NxBxCx.shape[:3]
  return jnp.moveaxis(x_NxBxCx, 0, 1).reshape(b, n * c, *x_NxBxCx.shape[3:])


def _scores(q_BxQxHxD, k_BxCxHxD, scale):
  return jnp.einsum('bqhd,bkhd->bhqk', q_BxQxHxD, k_BxCxHxD, preferred_element_type=jnp.float32) * scale


def _block_mask(q_ids_BxQ, kv_ids_BxC, carry):
  """Which of the block's keys each query sees, [B, 1, Q or 1, C]; see the module doc for the barrier."""
  kv_ids_BxC, q_ids_BxQ, _ = jax.lax.optimization_barrier((kv_ids_BxC, q_ids_BxQ, carry))
  if q_ids_BxQ is None:
    return (kv_ids_BxC > 0)[:, None, None, :]
  return q_ids_BxQ[:, None, :, None] == kv_ids_BxC[:, None, None, :]


def _forward(q, k, v, kv_ids, q_ids, block_size):
  """(out in q.dtype, log-sum-exp [B, H, Q] float32)."""
  b, nq, h, d = q.shape
  scale = d**-0.5

  def one_block(carry, block):
    max_BxHxQ, total_BxHxQ, acc_BxHxQxD = carry
    k_c, v_c, kv_ids_c = block
    seen = _block_mask(q_ids, kv_ids_c, max_BxHxQ)
    s = _scores(q, k_c, scale)
    new_max = jnp.maximum(max_BxHxQ, jnp.max(jnp.where(seen, s, -jnp.inf), axis=-1))
    # A row whose keys so far were all invalid has max -inf: keep the exponent finite there.
    safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    p = jnp.where(seen, jnp.exp(s - safe_max[..., None]), 0.0)
    correction = jnp.exp(jnp.where(jnp.isfinite(max_BxHxQ), max_BxHxQ, safe_max) - safe_max)
    total = total_BxHxQ * correction + jnp.sum(p, axis=-1)
    acc = acc_BxHxQxD * correction[..., None] + jnp.einsum(
      'bhqk,bkhd->bhqd', p.astype(q.dtype), v_c, preferred_element_type=jnp.float32
    )
    return (new_max, total, acc), None

  init = (
    jnp.full((b, h, nq), -jnp.inf, jnp.float32),
    jnp.zeros((b, h, nq), jnp.float32),
    jnp.zeros((b, h, nq, d), jnp.float32),
  )
  blocks = (_blocks(k, block_size), _blocks(v, block_size), _blocks(kv_ids, block_size))
  (max_BxHxQ, total_BxHxQ, acc_BxHxQxD), _ = jax.lax.scan(one_block, init, blocks)
  out_BxQxHxD = jnp.swapaxes(acc_BxHxQxD / total_BxHxQ[..., None], 1, 2).astype(q.dtype)
  return out_BxQxHxD, max_BxHxQ + jnp.log(total_BxHxQ)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, kv_ids, q_ids, block_size):
  return _forward(q, k, v, kv_ids, q_ids, block_size)[0]


def _attention_fwd(q, k, v, kv_ids, q_ids, block_size):
  out, lse = (checkpoint_name(x, RESIDUAL_NAME) for x in _forward(q, k, v, kv_ids, q_ids, block_size))
  return out, (q, k, v, kv_ids, q_ids, out, lse)


def _attention_bwd(block_size, residuals, d_out_BxQxHxD):
  q, k, v, kv_ids, q_ids, out, lse_BxHxQ = residuals
  scale = q.shape[-1] ** -0.5
  d_out = d_out_BxQxHxD.astype(q.dtype)
  # sum_k p * dp = sum_d dout * out: the softmax's backward needs only this per row.
  delta_BxHxQ = jnp.einsum('bqhd,bqhd->bhq', d_out.astype(jnp.float32), out.astype(jnp.float32))

  def one_block(dq_BxQxHxD, block):
    k_c, v_c, kv_ids_c = block
    seen = _block_mask(q_ids, kv_ids_c, dq_BxQxHxD)
    p = jnp.where(seen, jnp.exp(_scores(q, k_c, scale) - lse_BxHxQ[..., None]), 0.0)
    dv_c = jnp.einsum('bhqk,bqhd->bkhd', p.astype(q.dtype), d_out, preferred_element_type=jnp.float32)
    dp = jnp.einsum('bqhd,bkhd->bhqk', d_out, v_c, preferred_element_type=jnp.float32)
    ds = (p * (dp - delta_BxHxQ[..., None]) * scale).astype(q.dtype)
    dq_BxQxHxD = dq_BxQxHxD + jnp.einsum('bhqk,bkhd->bqhd', ds, k_c, preferred_element_type=jnp.float32)
    dk_c = jnp.einsum('bhqk,bqhd->bkhd', ds, q, preferred_element_type=jnp.float32)
    return dq_BxQxHxD, (dk_c.astype(k.dtype), dv_c.astype(v.dtype))

  blocks = (_blocks(k, block_size), _blocks(v, block_size), _blocks(kv_ids, block_size))
  dq, (dk_blocks, dv_blocks) = jax.lax.scan(one_block, jnp.zeros(q.shape, jnp.float32), blocks)
  return dq.astype(q.dtype), _unblocks(dk_blocks), _unblocks(dv_blocks), None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(
  q_BxQxHxD: jax.Array,
  k_BxKxHxD: jax.Array,
  v_BxKxHxD: jax.Array,
  kv_ids_BxK: jax.Array,
  q_ids_BxQ: jax.Array | None = None,
  *,
  block_size: int,
) -> jax.Array:
  """softmax(q k^T / sqrt(D), over the keys each query sees) v, in q's dtype.

  kv_ids_BxK, q_ids_BxQ: int segment ids (see the module doc); a bool kv_ids is a validity mask.
  The keys are split into ceil(K / block_size) equal blocks of at most block_size keys, padded
  (as keys nobody sees, id -1) by fewer than one key per block: 4097 keys run as 9 blocks of 456.
  """
  num_keys = k_BxKxHxD.shape[1]
  num_blocks = -(-num_keys // block_size)
  block_size = -(-num_keys // num_blocks)
  pad = num_blocks * block_size - num_keys
  kv_ids_BxK = kv_ids_BxK.astype(jnp.int32)
  q_ids_BxQ = None if q_ids_BxQ is None else q_ids_BxQ.astype(jnp.int32)
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    k_BxKxHxD, v_BxKxHxD = jnp.pad(k_BxKxHxD, widths), jnp.pad(v_BxKxHxD, widths)
    kv_ids_BxK = jnp.pad(kv_ids_BxK, ((0, 0), (0, pad)), constant_values=-1)
  return _attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, kv_ids_BxK, q_ids_BxQ, block_size)
