"""MultimodalMMDiT: the LGDLM text <-> latent diffusion transformer in Flax (docs/reference.md section 1).

    model = MultimodalMMDiT(config.model)
    params = model.init(key, tokens_BxS, latents_BxD, t_text_B, t_latent_B)['params']
    text_logits_BxSxV, latent_pred_Bx1xD = model.apply({'params': params}, tokens_BxS, latents_BxD,
                                                       t_text_B, t_latent_B, attention_mask=mask_BxS)
    text_out_BxSxH, latent_out_Bx1xH = model.apply({'params': params}, tokens_BxS, latents_BxD, t_text_B,
                                                   t_latent_B, mask_BxS, method=MultimodalMMDiT.backbone)
    text_logits_BxSxV = model.apply({'params': params}, text_out_BxSxH, method=MultimodalMMDiT.text_logits)

Packed rows (lgdlm_jax.model.segments): with `segments=PackedSegments(...)` the latents are [B,K,D]
(K latent tokens per row, one per segment), both timesteps [B,K] (one per segment), and the latent
outputs [B,K,H] / [B,K,D]; every segment gets what it would get alone.

Parameters are float32; `model.dtype` ('float32' or 'bfloat16') sets the compute dtype of the
matmuls. Norms, softmax, the hyper-connection mixing and (`model.residual_dtype`, float32 by
default) the residual streams run in float32; the text heads' matmuls accumulate into float32
logits. `model.matmul_precision` (None: the ambient jax.default_matmul_precision) sets the
precision of every matmul, and `model.attention` the attention backend (lgdlm_jax.model.attention;
'auto' must be resolved for the platform first).
"""

import contextlib
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lgdlm_jax.model import attention as attention_lib
from lgdlm_jax.model import layers
from lgdlm_jax.model import mmdit
from lgdlm_jax.model import segments as segments_lib
from lgdlm_jax.model.length_head import LengthHead

# The names are lgdlm_jax.config.schema.CHOICES['model.dtype'].
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Matmuls with this dot_general return float32 whatever their inputs' dtype.
_FLOAT32_OUTPUT_DOT = functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)


TIMESTEP_FREQUENCY_DIM = 256


def timestep_features(t_B: jax.Array, dim: int = TIMESTEP_FREQUENCY_DIM, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal features [cos(t f), sin(t f)] with f_i = exp(-ln(max_period) i / (dim/2)).

  t is used as given (in [0, 1], not scaled to 1000), as in the reference.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t_B.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nn.Module):
  """Sinusoidal features -> Linear(256, C) -> SiLU -> Linear(C, C)."""

  cond_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, t_B: jax.Array) -> jax.Array:
    x = layers.torch_linear(self.cond_dim, TIMESTEP_FREQUENCY_DIM, name='mlp_0', dtype=self.dtype)(
      timestep_features(t_B)
    )
    return layers.torch_linear(self.cond_dim, self.cond_dim, name='mlp_2', dtype=self.dtype)(nn.silu(x))


class MultimodalConditioning(nn.Module):
  """c = combine(concat[silu(text_emb(t_text)), silu(latent_emb(t_latent))])."""

  cond_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, text_t_B: jax.Array, latent_t_B: jax.Array) -> jax.Array:
    c = self.cond_dim
    text_emb = TimestepEmbedder(c, self.dtype, name='text_sigma_map')(text_t_B)
    latent_emb = TimestepEmbedder(c, self.dtype, name='latent_sigma_map')(latent_t_B)
    x = jnp.concatenate([nn.silu(text_emb), nn.silu(latent_emb)], axis=-1)
    x = layers.torch_linear(4 * c, 2 * c, name='combine_0', dtype=self.dtype)(x)
    return layers.torch_linear(c, 4 * c, name='combine_2', dtype=self.dtype)(nn.silu(x))


class TextEncoder(nn.Module):
  """Token embedding plus a learned position embedding sliced to the sequence length."""

  vocab_size: int
  hidden_size: int
  max_seq_len: int

  @nn.compact
  def __call__(self, tokens_BxS: jax.Array, positions_BxS: jax.Array | None = None) -> jax.Array:
    """positions_BxS (packed rows: each token's position inside its segment) indexes the position
    embedding; None: positions 0..S-1."""
    # torch.nn.Embedding initialises from N(0, 1).
    embed = nn.Embed(
      self.vocab_size,
      self.hidden_size,
      embedding_init=nn.initializers.normal(1.0),
      param_dtype=jnp.float32,
      name='token_embed',
    )
    position_1xLxH = self.param('position_embed', layers.normal_002, (1, self.max_seq_len, self.hidden_size))
    if positions_BxS is None:
      return embed(tokens_BxS) + position_1xLxH[:, : tokens_BxS.shape[1]]
    return embed(tokens_BxS) + jnp.take(position_1xLxH[0], positions_BxS, axis=0)


class LatentEncoder(nn.Module):
  """Linear(D, 2H) -> LayerNorm(2H) -> exact GELU -> Linear(2H, H), plus a position embedding."""

  hidden_size: int
  dtype: Any

  @nn.compact
  def __call__(self, latents_BxLxD: jax.Array) -> jax.Array:
    h = self.hidden_size
    x = layers.torch_linear(2 * h, latents_BxLxD.shape[-1], name='projection_0', dtype=self.dtype)(latents_BxLxD)
    x = layers.gelu(layers.LayerNorm(self.dtype, name='projection_1')(x))
    x = layers.torch_linear(h, 2 * h, name='projection_3', dtype=self.dtype)(x)
    position_1x1xH = self.param('position_embed', layers.normal_002, (1, 1, h))
    return x + position_1x1xH


def as_one_latent_token(latents: jax.Array) -> jax.Array:
  """[B,D] -> [B,1,D]; [B,K,D] -> mean over K -> [B,1,D] (the model uses one latent token)."""
  if latents.ndim == 2:
    return latents[:, None, :]
  if latents.ndim == 3:
    return jnp.mean(latents, axis=1, keepdims=True) if latents.shape[1] > 1 else latents
  raise ValueError(f'latents must be [B,D], [B,1,D] or [B,K,D]; got shape {latents.shape}')


class MultimodalMMDiT(nn.Module):
  """Text tokens + one latent token through a two-modality MMDiT conditioned on both timesteps.

  `__call__` runs everything; a caller that reads only some outputs composes the parts instead
  (lgdlm_jax.model.passes): `backbone` gives the text and latent streams after the last block,
  `text_logits` / `cluster_logits` / `latent_head` project them. The vocabulary projection is a
  large share of the model's FLOPs, so a pass whose text logits nobody reads should not run it.
  """

  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    dtype = COMPUTE_DTYPES[cfg.dtype]
    h, c = cfg.hidden_size, cfg.cond_dim
    self.text_encoder = TextEncoder(cfg.vocab_size, h, cfg.max_seq_len, name='text_encoder')
    self.latent_encoder = LatentEncoder(h, dtype, name='latent_encoder')
    self.conditioning = MultimodalConditioning(c, dtype, name='conditioning')
    self.mmdit = mmdit.MMDiT(
      cfg.n_blocks,
      h,
      c,
      cfg.num_residual_streams,
      dtype,
      attention_lib.options_from_config(cfg, dtype),
      COMPUTE_DTYPES[cfg.residual_dtype],
      cfg.remat_policy,
      cfg.scan_unroll,
      name='mmdit',
    )
    self.text_head = self._text_head('text_head', dtype)
    if cfg.cluster_size > 0:
      self.text_head_clusters = self._text_head('text_head_clusters', dtype)
    self.latent_head_0 = layers.torch_linear(2 * h, h, name='latent_head_0', dtype=dtype)
    self.latent_dropout = nn.Dropout(cfg.dropout)
    self.latent_head_3 = layers.torch_linear(
      cfg.latent_dim,
      2 * h,
      name='latent_head_3',
      dtype=dtype,
      kernel_init=layers.normal_002,
      bias_init=nn.initializers.zeros,
    )
    if cfg.length_head:
      self.length_head = LengthHead(cfg.max_seq_len, h, dtype, name='length_head')

  def __call__(
    self,
    text_tokens: jax.Array,
    latents: jax.Array,
    text_timesteps: jax.Array | None = None,
    latent_timesteps: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    deterministic: bool = True,
    segments: segments_lib.PackedSegments | None = None,
  ) -> tuple[jax.Array, ...]:
    """(text_logits [B,S,V], latent_pred [B,1,D] ([B,K,D] with segments)[, cluster_logits [B,S,V]])."""
    text_out_BxSxH, latent_out_Bx1xH = self.backbone(
      text_tokens, latents, text_timesteps, latent_timesteps, attention_mask, segments
    )
    latent_pred = self.latent_head(latent_out_Bx1xH, deterministic)
    cluster = (self.cluster_logits(text_out_BxSxH),) if self.config.cluster_size > 0 else ()
    if self.config.length_head and self.is_initializing():
      self.length_logits(latents)  # creates its parameters; callers read it through `length_logits`
    return (self.text_logits(text_out_BxSxH), latent_pred) + cluster

  def backbone(
    self,
    text_tokens: jax.Array,
    latents: jax.Array,
    text_timesteps: jax.Array | None = None,
    latent_timesteps: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    segments: segments_lib.PackedSegments | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """The text [B,S,H] and latent [B,1,H] ([B,K,H] with segments) streams after the last block, before any head."""
    cfg = self.config
    batch, seq_len = text_tokens.shape
    if seq_len > cfg.max_seq_len:
      raise ValueError(f'text_tokens has sequence length {seq_len} > model.max_seq_len={cfg.max_seq_len}')
    if segments is None:
      latents_BxLxD = as_one_latent_token(latents)
    else:
      segments_lib.check(segments, batch, seq_len, latents.shape)
      latents_BxLxD = latents
    if latents_BxLxD.shape[0] != batch or latents_BxLxD.shape[-1] != cfg.latent_dim:
      raise ValueError(
        f'latents shape {latents.shape} does not fit batch {batch} and model.latent_dim={cfg.latent_dim}'
      )
    # One timestep per row, or per segment (packed rows: [B,K]).
    shape = (batch,) if segments is None else latents_BxLxD.shape[:2]
    zeros = jnp.zeros(shape, jnp.float32)
    text_t = zeros if text_timesteps is None else jnp.broadcast_to(text_timesteps, shape)
    latent_t = zeros if latent_timesteps is None else jnp.broadcast_to(latent_timesteps, shape)
    # None (no padding) skips the masking altogether.
    text_mask_BxS = None if attention_mask is None else attention_mask.astype(bool)
    if text_mask_BxS is not None and text_mask_BxS.shape != (batch, seq_len):
      raise ValueError(f'attention_mask shape {attention_mask.shape} != text_tokens shape {text_tokens.shape}')
    with self._precision():
      if segments is None:
        text_BxSxH = self.text_encoder(text_tokens)
        cond = self.conditioning(text_t, latent_t)
      else:
        text_BxSxH = self.text_encoder(text_tokens, segments.positions_BxS)
        # Per segment: [B*K] timesteps -> [B,K,C], gathered per token inside the blocks.
        cond = self.conditioning(text_t.reshape(-1), latent_t.reshape(-1)).reshape(*shape, -1)
      latent_BxLxH = self.latent_encoder(latents_BxLxD.astype(jnp.float32))
      return self.mmdit(text_BxSxH, latent_BxLxH, cond, text_mask_BxS, segments)

  def text_logits(self, text_out_BxSxH: jax.Array) -> jax.Array:
    """The token logits [B,S,V] (float32) of the backbone's text stream."""
    with self._precision():
      return self.text_head(text_out_BxSxH).astype(jnp.float32)

  def cluster_logits(self, text_out_BxSxH: jax.Array) -> jax.Array:
    """The cluster head's logits [B,S,V] (float32); only where model.cluster_size > 0."""
    with self._precision():
      return self.text_head_clusters(text_out_BxSxH).astype(jnp.float32)

  def latent_head(self, latent_out_Bx1xH: jax.Array, deterministic: bool = True) -> jax.Array:
    """The latent prediction [B,1,D] ([B,K,D] on packed rows; float32) of the backbone's latent stream.

    Dropout sits here only."""
    with self._precision():
      x = layers.gelu(self.latent_head_0(latent_out_Bx1xH))
      return self.latent_head_3(self.latent_dropout(x, deterministic=deterministic)).astype(jnp.float32)

  def length_logits(self, latents_BxD: jax.Array) -> jax.Array:
    """The length head's logits [..., S] over lengths 1..S from clean latents [..., D]; only where
    model.length_head (lgdlm_jax.model.length_head)."""
    with self._precision():
      return self.length_head(latents_BxD)

  def _precision(self) -> contextlib.AbstractContextManager:
    precision = self.config.matmul_precision
    return contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision)

  def _text_head(self, name: str, dtype: Any) -> nn.Dense:
    # Logits are accumulated into float32 (never rounded to bfloat16): the cross-entropy and the
    # samplers' argmax read them at full precision.
    return layers.torch_linear(
      self.config.vocab_size,
      self.config.hidden_size,
      name=name,
      dtype=dtype,
      kernel_init=layers.normal_002,
      bias_init=nn.initializers.zeros,
      dot_general=_FLOAT32_OUTPUT_DOT,
    )
