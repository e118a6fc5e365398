"""The generalized MMDiT backbone of mmdit 0.3.0 for two modalities (text, latent).

Blocks are applied with `nn.scan` over stacked parameters (leading axis = block index); with
model.scan_unroll = 1 that keeps compile time independent of depth, while unrolling (several
blocks per iteration) runs faster on CPU. Per block and modality m (0 = text, 1 = latent):
  attention: residual width -> adaptive LayerNorm -> joint attention -> * gamma -> residual depth
  feed-forward: residual width -> adaptive LayerNorm -> MLP -> * gamma -> residual depth
On packed rows (lgdlm_jax.model.segments) the conditioning is [B, K, C], one per segment: every
modulation (the adaptive LayerNorms' gamma and beta, the post-branch gammas) is projected per
segment and gathered to each token by its slot, and attention stays inside each segment.
Submodule names follow the PyTorch state dict with each numeric index joined to its parent by '_'
(`attn_layernorms.0.to_cond.2` -> `attn_layernorms_0/to_cond_2`); see lgdlm_jax.convert.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgdlm_jax.model import attention as attention_lib
from lgdlm_jax.model import hyper_connections
from lgdlm_jax.model import layers
from lgdlm_jax.model import segments as segments_lib

NUM_MODALITIES = 2
# mmdit's generalized MMDiT never forwards the reference config's n_heads, so attention is always
# 8 heads of 64 dims (inner width 512) whatever the config says.
ATTN_HEADS = 8
ATTN_HEAD_DIM = 64

# The names are lgdlm_jax.config.schema.CHOICES['model.remat_policy'].
# 'dots' saves every matmul output: the linear layers' and, with the fused attention backends, the
# attention's output and log-sum-exp (so its forward is not run again in the backward pass).
REMAT_POLICIES = {
  'none': None,
  'full': jax.checkpoint_policies.nothing_saveable,
  'dots': jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    jax.checkpoint_policies.save_only_these_names(attention_lib.RESIDUAL_NAME),
  ),
}


def modulation_per_token(mod: jax.Array, slots_BxN: jax.Array | None) -> jax.Array:
  """A modulation [B, F] (one per row) as [B, 1, F], or [B, K, F] (one per segment) gathered to [B, N, F]."""
  return mod[:, None, :] if slots_BxN is None else segments_lib.per_token(mod, slots_BxN)


class AdaptiveLayerNorm(nn.Module):
  """LayerNorm without affine, then x * gamma + beta with [gamma, beta] = Linear(silu(cond))."""

  dim: int
  cond_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxNxH: jax.Array, silu_cond_BxC: jax.Array, slots_BxN: jax.Array | None = None) -> jax.Array:
    """silu_cond_BxC: [B, C], or [B, K, C] with slots_BxN each token's segment slot (packed rows)."""
    # The reference zero-inits the weight and sets the bias to gamma = 1, beta = 0.
    to_cond = layers.torch_linear(
      2 * self.dim,
      self.cond_dim,
      name='to_cond_2',
      dtype=self.dtype,
      kernel_init=nn.initializers.zeros,
      bias_init=lambda k, s, d=jnp.float32: jnp.concatenate([jnp.ones(s[0] // 2, d), jnp.zeros(s[0] // 2, d)]),
    )
    modulation = modulation_per_token(to_cond(silu_cond_BxC), slots_BxN)
    gamma, beta = jnp.split(modulation.astype(jnp.float32), 2, axis=-1)
    return (layers.layer_norm(x_BxNxH) * gamma + beta).astype(self.dtype)


class JointAttention(nn.Module):
  """Softmax attention over the tokens of all modalities together (text first), per modality.

  Each modality has its own qkv and output projections (no biases); the attention itself is
  lgdlm_jax.model.attention.joint_attention with the backend `attention.backend`. Masked keys are
  excluded; the latent token is never masked, so no query row is ever fully masked. With
  segment_ids (packed rows) a query attends exactly the keys of its own segment.
  """

  dims: tuple[int, ...]
  attention: attention_lib.AttentionOptions

  @nn.compact
  def __call__(
    self,
    inputs: tuple[jax.Array, ...],
    key_masks: tuple[jax.Array | None, ...],
    segment_ids: tuple[jax.Array, ...] | None = None,
  ) -> tuple[jax.Array, ...]:
    inner = ATTN_HEADS * ATTN_HEAD_DIM
    dtype = self.attention.dtype
    qs, ks, vs = [], [], []
    for m, (x_BxNxH, dim) in enumerate(zip(inputs, self.dims)):
      qkv = layers.torch_linear(3 * inner, dim, name=f'to_qkv_{m}', dtype=dtype, use_bias=False)(x_BxNxH)
      # Features are laid out (qkv, heads, head_dim) in that order.
      q, k, v = jnp.split(qkv.reshape(*qkv.shape[:2], 3, ATTN_HEADS, ATTN_HEAD_DIM), 3, axis=2)
      qs.append(q[:, :, 0])
      ks.append(k[:, :, 0])
      vs.append(v[:, :, 0])

    attended = attention_lib.joint_attention(tuple(qs), tuple(ks), tuple(vs), key_masks, self.attention, segment_ids)
    outputs = []
    for m, (out_BxQxKxD, dim) in enumerate(zip(attended, self.dims)):
      to_out = layers.torch_linear(dim, inner, name=f'to_out_{m}', dtype=dtype, use_bias=False)
      outputs.append(to_out(out_BxQxKxD.reshape(*out_BxQxKxD.shape[:2], inner)))
    return tuple(outputs)


class FeedForward(nn.Module):
  """x_transformers.FeedForward(dim): Linear(dim, 4 dim) -> exact GELU -> Linear(4 dim, dim)."""

  dim: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = layers.torch_linear(4 * self.dim, self.dim, name='ff_0_0', dtype=self.dtype)(x)
    return layers.torch_linear(self.dim, 4 * self.dim, name='ff_2', dtype=self.dtype)(layers.gelu(hidden))


class TokenLayout(NamedTuple):
  """Per modality (text, latent): padding keys (None: none), each token's segment slot (None: the row's
  one conditioning) and attention segment ids (None: unpacked rows)."""

  key_masks: tuple[jax.Array | None, ...]
  slots: tuple[jax.Array | None, ...]
  segment_ids: tuple[jax.Array, ...] | None


def token_layout(text_mask_BxS: jax.Array | None, segments: segments_lib.PackedSegments | None) -> TokenLayout:
  if segments is None:
    return TokenLayout((text_mask_BxS, None), (None, None), None)
  num_slots = segments.latent_mask_BxK.shape[1]
  return TokenLayout(
    (text_mask_BxS, None),
    (segments_lib.text_slots(segments.segment_ids_BxS, num_slots), segments_lib.latent_slots(segments.latent_mask_BxK)),
    (segments.segment_ids_BxS.astype(jnp.int32), segments_lib.latent_segment_ids(segments.latent_mask_BxK)),
  )


class MMDiTBlock(nn.Module):
  """One generalized MMDiT block; called by nn.scan with carry = the two modalities' streams."""

  dim: int
  cond_dim: int
  num_streams: int
  dtype: Any
  attention: attention_lib.AttentionOptions

  @nn.compact
  def __call__(
    self, streams: tuple[jax.Array, jax.Array], silu_cond_BxC: jax.Array, tokens: TokenLayout
  ) -> tuple[tuple[jax.Array, jax.Array], None]:
    dims = (self.dim,) * NUM_MODALITIES
    # One Linear gives the post-branch gammas of attention and feed-forward for every modality;
    # the reference initialises it to weight 0, bias 1.
    gammas = layers.torch_linear(
      2 * sum(dims),
      self.cond_dim,
      name='to_post_branch_gammas_2',
      dtype=self.dtype,
      kernel_init=nn.initializers.zeros,
      bias_init=nn.initializers.ones,
    )(silu_cond_BxC)
    attn_gammas, ff_gammas = jnp.split(gammas, 2, axis=-1)
    attn_gammas, ff_gammas = (
      [modulation_per_token(g, slots) for g, slots in zip(jnp.split(x, NUM_MODALITIES, axis=-1), tokens.slots)]
      for x in (attn_gammas, ff_gammas)
    )

    def residuals(kind: str) -> list[nn.Module]:
      return [
        hyper_connections.residual_function(self.num_streams, self.dim, f'{kind}_residual_fns_{m}')
        for m in range(NUM_MODALITIES)
      ]

    # Attention sub-layer.
    attn_residuals = residuals('attn')
    branch_inputs, states = zip(*(res.width(s) for res, s in zip(attn_residuals, streams)))
    normed = [
      AdaptiveLayerNorm(self.dim, self.cond_dim, self.dtype, name=f'attn_layernorms_{m}')(
        x, silu_cond_BxC, tokens.slots[m]
      )
      for m, x in enumerate(branch_inputs)
    ]
    attended = JointAttention(dims, self.attention, name='joint_attn')(
      tuple(normed), tokens.key_masks, tokens.segment_ids
    )
    streams = tuple(res.depth(out * g, st) for res, out, g, st in zip(attn_residuals, attended, attn_gammas, states))

    # Feed-forward sub-layer.
    ff_residuals = residuals('ff')
    branch_inputs, states = zip(*(res.width(s) for res, s in zip(ff_residuals, streams)))
    outs = []
    for m, x in enumerate(branch_inputs):
      x = AdaptiveLayerNorm(self.dim, self.cond_dim, self.dtype, name=f'ff_layernorms_{m}')(
        x, silu_cond_BxC, tokens.slots[m]
      )
      outs.append(FeedForward(self.dim, self.dtype, name=f'feedforwards_{m}')(x))
    streams = tuple(res.depth(out * g, st) for res, out, g, st in zip(ff_residuals, outs, ff_gammas, states))
    return streams, None


# model.scan_unroll = 0 (auto): blocks per scan iteration on CPU, where unrolling pays (see MMDiT;
# README, "What moved the CPU figure"); accelerators keep 1, so compile time stays flat in depth.
CPU_SCAN_UNROLL = 4


def auto_scan_unroll(depth: int, platform: str) -> int:
  """The blocks per scan iteration model.scan_unroll = 0 stands for on `platform`."""
  return min(CPU_SCAN_UNROLL, depth) if platform == 'cpu' else 1


class MMDiT(nn.Module):
  """Depth x MMDiTBlock over R residual streams, then stream sum and per-modality RMSNorm.

  scan_unroll blocks run per scan iteration (>= depth: fully unrolled; 0: `auto_scan_unroll` for
  jax.default_backend()); the parameters stay stacked either way. Unrolling lets XLA keep each
  block's activations in their own buffers instead of copying them into and out of the scan's
  stacked residuals: faster steps on CPU (README, "What moved the CPU figure"), at the price of
  compile time growing with depth.
  """

  depth: int
  dim: int
  cond_dim: int
  num_streams: int
  dtype: Any
  attention: attention_lib.AttentionOptions
  # The residual streams' dtype: float32 keeps bfloat16 rounding out of the sums that run through
  # every block (the branches still compute in `dtype`).
  residual_dtype: Any = jnp.float32
  remat_policy: str = 'none'
  scan_unroll: int = 1

  @nn.compact
  def __call__(
    self,
    text_BxSxH: jax.Array,
    latent_BxLxH: jax.Array,
    cond_BxC: jax.Array,
    text_mask_BxS: jax.Array | None,
    segments: segments_lib.PackedSegments | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """text_mask_BxS: False marks padding keys (None = no padding).

    The latent token is never masked, so no query row is ever fully masked. With segments (packed
    rows) cond is [B, K, C] and the latent stream [B, K, H].
    """
    block_cls = MMDiTBlock
    if self.remat_policy != 'none':
      block_cls = nn.remat(MMDiTBlock, prevent_cse=False, policy=REMAT_POLICIES[self.remat_policy])
    blocks = nn.scan(
      block_cls,
      variable_axes={'params': 0},
      split_rngs={'params': True},
      in_axes=(nn.broadcast, nn.broadcast),
      length=self.depth,
      unroll=min(self.scan_unroll or auto_scan_unroll(self.depth, jax.default_backend()), self.depth),
    )(self.dim, self.cond_dim, self.num_streams, self.dtype, self.attention, name='blocks')

    streams = tuple(
      hyper_connections.expand_streams(x.astype(self.residual_dtype), self.num_streams)
      for x in (text_BxSxH, latent_BxLxH)
    )
    streams, _ = blocks(streams, nn.silu(cond_BxC), token_layout(text_mask_BxS, segments))
    return tuple(
      layers.RMSNorm(name=f'norms_{m}')(hyper_connections.reduce_streams(s, self.num_streams))
      for m, s in enumerate(streams)
    )
