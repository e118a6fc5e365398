"""Packed rows: several samples (segments) per row, each with its own latent token and timesteps.

    segments = PackedSegments(segment_ids_BxS, positions_BxS, latent_mask_BxK)
    text_logits_BxSxV, latent_pred_BxKxD = model.apply(variables, tokens_BxS, latents_BxKxD, t_text_BxK,
                                                       t_latent_BxK, mask_BxS, segments=segments)

segment_ids: k in 1..K for the tokens of the row's k-th segment, 0 for padding; positions: a token's
position inside its segment; latent_mask: True for the slots (0..n-1) that hold a segment. The model
computes for every segment exactly what it computes for that sample alone: attention stays inside
a segment (its text tokens and latent token k), the position embedding restarts per segment, and
the timestep conditioning (and every adaptive-LayerNorm modulation) is computed per segment
[B, K, ...] and gathered per token. Padding tokens and empty latent slots form segment 0: they
attend among themselves, so their outputs are finite, and nobody reads them.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class PackedSegments(NamedTuple):
  segment_ids_BxS: jax.Array
  positions_BxS: jax.Array
  latent_mask_BxK: jax.Array


def latent_segment_ids(latent_mask_BxK: jax.Array) -> jax.Array:
  """The latent tokens' segment ids [B, K] int32: k for a valid slot k-1, 0 for an empty one."""
  slots_K = jnp.arange(1, latent_mask_BxK.shape[1] + 1, dtype=jnp.int32)
  return jnp.where(latent_mask_BxK.astype(bool), slots_K[None], 0)


def text_slots(segment_ids_BxS: jax.Array, num_slots: int) -> jax.Array:
  """The latent slot [B, S] each text token takes its segment's values from (padding: slot 0, unread)."""
  return jnp.clip(segment_ids_BxS.astype(jnp.int32) - 1, 0, num_slots - 1)


def latent_slots(latent_mask_BxK: jax.Array) -> jax.Array:
  """Each latent token's own slot [B, K] (the identity gather, so both modalities take one code path)."""
  batch, num_slots = latent_mask_BxK.shape
  return jnp.broadcast_to(jnp.arange(num_slots, dtype=jnp.int32)[None], (batch, num_slots))


def per_token(values_BxKxF: jax.Array, slots_BxN: jax.Array) -> jax.Array:
  """Per-segment values [B, K, F] gathered to tokens [B, N, F] by slot."""
  return jnp.take_along_axis(values_BxKxF, slots_BxN[..., None], axis=1)


def check(segments: PackedSegments, batch: int, seq_len: int, latents_shape: tuple[int, ...]) -> None:
  """Shapes fit the packed-rows contract; the error names what does not."""
  if segments.segment_ids_BxS.shape != (batch, seq_len) or segments.positions_BxS.shape != (batch, seq_len):
    raise ValueError(
      f'segment_ids {segments.segment_ids_BxS.shape} and positions {segments.positions_BxS.shape} must be '
      f'[B, S] = {(batch, seq_len)}'
    )
  if len(latents_shape) != 3 or segments.latent_mask_BxK.shape != latents_shape[:2]:
    raise ValueError(
      f'packed rows take latents [B, K, D] and latent_mask [B, K]; got latents {latents_shape} '
      f'and latent_mask {segments.latent_mask_BxK.shape}'
    )
