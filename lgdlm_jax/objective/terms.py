"""The pieces the cycle_vae terms are made of, shared by the joint loss (lgdlm_jax.objective.cycle_vae)
and the pass-by-pass gradient (lgdlm_jax.training.gradients): the batch as every pass reads it, a
pass's inputs, the clamped terms, the length head's term, and the pseudo tokens.

A packed batch (lgdlm_jax.data, 'segment_ids' present) is viewed per segment: every latent and
timestep is [B,K,...], the latent terms average over valid segments and the L2T cross-entropy over
real tokens (loss.text_positions='valid'), so each term equals that of the same samples unpacked.
"""

from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgdlm_jax.errors import ConfigError
from lgdlm_jax.model import layers
from lgdlm_jax.model import passes
from lgdlm_jax.model.passes import ModelPass
from lgdlm_jax.model.segments import PackedSegments
from lgdlm_jax.objective import diffusion
from lgdlm_jax.objective.options import ObjectiveOptions

# F.normalize's eps: the norm is clamped to at least this before dividing.
NORMALIZE_EPS = 1e-8
LATENT_LOSS_MAX = 10.0
TEXT_LOSS_MAX = 100.0


def masked_mean(values: jax.Array, valid: jax.Array | None) -> jax.Array:
  """The mean of `values` over every position (valid None), or over the valid ones only."""
  if valid is None:
    return jnp.mean(values)
  return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def normalized_mse(pred_BxD: jax.Array, target_BxD: jax.Array, valid_B: jax.Array | None = None) -> jax.Array:
  """Mean squared error between the l2-normalised prediction and target (mean over B and D).

  A packed batch's [B,K,D] averages over its valid segments (valid_B = latent_mask [B,K]) and D,
  which is the mean over samples of the same samples unpacked.
  """
  squared_BxD = jnp.square(
    layers.l2_normalize(pred_BxD, eps=NORMALIZE_EPS) - layers.l2_normalize(target_BxD, eps=NORMALIZE_EPS)
  )
  if valid_B is None:
    return jnp.mean(squared_BxD)
  return masked_mean(jnp.mean(squared_BxD, axis=-1), valid_B)


def text_cross_entropy(
  logits_BxSxV: jax.Array, targets_BxS: jax.Array, valid_BxS: jax.Array | None = None
) -> jax.Array:
  """Token cross-entropy averaged over ALL B*S positions, padding included (as the reference), or
  (valid_BxS, loss.text_positions='valid') over the valid positions only: their sum / their count.

  Written as logsumexp - target logit rather than a gather from log_softmax so that the [B,S,V]
  log-probabilities are never materialised and XLA fuses the backward (softmax minus the
  scattered one-hot) into fewer passes over [B,S,V].
  """
  logits_BxSxV = logits_BxSxV.astype(jnp.float32)
  target_logit_BxS = jnp.take_along_axis(logits_BxSxV, targets_BxS[..., None], axis=-1)[..., 0]
  return masked_mean(jax.nn.logsumexp(logits_BxSxV, axis=-1) - target_logit_BxS, valid_BxS)


def latent_term(pred_BxD: jax.Array, target_BxD: jax.Array, valid_B: jax.Array | None = None) -> jax.Array:
  """A T2L pass's loss term as the reference clamps it."""
  return jnp.clip(normalized_mse(pred_BxD, target_BxD, valid_B), 0.0, LATENT_LOSS_MAX)


def text_term(logits_BxSxV: jax.Array, targets_BxS: jax.Array, valid_BxS: jax.Array | None = None) -> jax.Array:
  """An L2T pass's loss term as the reference clamps it."""
  return jnp.clip(text_cross_entropy(logits_BxSxV, targets_BxS, valid_BxS), 0.0, TEXT_LOSS_MAX)


def length_term(params, view: 'BatchView', *, model: nn.Module) -> jax.Array:
  """The length head's cross-entropy over lengths 1..S from each sample's CLEAN latent, averaged over
  samples (valid segments of a packed batch); not clamped, it has no counterpart in the reference.

  The clean latent, not the backbone's latent token: in an L2T pass that token attends to its
  segment's [MASK] tokens, whose count is the answer.
  """
  logits_BxS = passes.length_logits(model, params, view.latents_BxD)
  return text_cross_entropy(logits_BxS, jnp.maximum(view.lengths_B - 1, 0), view.latent_valid_B)


def sample_pseudo_tokens(logits_BxSxV: jax.Array, sampling: str, key: jax.Array) -> jax.Array:
  """Pseudo tokens [B,S] int32 from L2T logits: argmax, or a categorical sample drawn with `key`."""
  logits_BxSxV = jax.lax.stop_gradient(logits_BxSxV)
  if sampling == 'argmax':
    return jnp.argmax(logits_BxSxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits_BxSxV, axis=-1).astype(jnp.int32)


def mean_l2_norm(x_BxD: jax.Array, valid_B: jax.Array | None = None) -> jax.Array:
  return masked_mean(jnp.linalg.norm(x_BxD, axis=-1), valid_B)


class BatchView(NamedTuple):
  """The batch as every pass reads it.

  Unpacked, a sample is a row: latents [B,D], timesteps [B]. Packed (segments set), a sample is a
  segment: latents [B,K,D], timesteps [B,K], and latent_valid_B [B,K] marks the slots that hold one.
  """

  input_ids_BxS: jax.Array
  latents_BxD: jax.Array
  mask_BxS: jax.Array | None  # None: no padding, the model skips masking
  all_mask_tokens_BxS: jax.Array
  zeros_B: jax.Array
  ones_B: jax.Array
  text_valid_BxS: jax.Array | None  # the L2T cross-entropy's positions; None = all B*S (the reference's)
  lengths_B: jax.Array  # each sample's token count: the length head's target
  latent_valid_B: jax.Array | None = None  # packed: latent_mask [B,K]; None = every row is a sample
  segments: PackedSegments | None = None


def _latents_2d(latent: jax.Array) -> jax.Array:
  if latent.ndim == 3 and latent.shape[1] == 1:
    latent = latent[:, 0, :]
  if latent.ndim != 2:
    raise ValueError(f"batch['latent'] must be [B,D] or [B,1,D], got shape {latent.shape}")
  return latent.astype(jnp.float32)


def batch_view(batch: Mapping[str, jax.Array], options: ObjectiveOptions) -> BatchView:
  """The view of an unpacked batch, or of a packed one (it has 'segment_ids'; see lgdlm_jax.data)."""
  input_ids_BxS = jnp.asarray(batch['input_ids']).astype(jnp.int32)
  mask = batch.get('attention_mask')
  mask_BxS = None if mask is None else jnp.asarray(mask).astype(bool)
  packed = 'segment_ids' in batch
  if packed and options.text_positions != 'valid':
    raise ConfigError(
      f"loss.text_positions={options.text_positions!r} with a packed batch (data.packing): use 'valid' (a packed "
      'row has no pad tail to average over)'
    )
  if packed:
    latents_BxD = jnp.asarray(batch['latent']).astype(jnp.float32)
    latent_valid_B = jnp.asarray(batch['latent_mask']).astype(bool)
    lengths_B = jnp.asarray(batch['segment_lengths']).astype(jnp.int32)
    segments = PackedSegments(
      jnp.asarray(batch['segment_ids']).astype(jnp.int32),
      jnp.asarray(batch['positions']).astype(jnp.int32),
      latent_valid_B,
    )
  else:
    latents_BxD, latent_valid_B, segments = _latents_2d(jnp.asarray(batch['latent'])), None, None
    seq_len = input_ids_BxS.shape[1]
    lengths_B = jnp.full(input_ids_BxS.shape[:1], seq_len, jnp.int32) if mask_BxS is None else jnp.sum(mask_BxS, -1)
  text_valid_BxS = None
  if options.text_positions == 'valid':
    text_valid_BxS = jnp.ones(input_ids_BxS.shape, bool) if mask_BxS is None else mask_BxS
  timestep_shape = latents_BxD.shape[:-1]
  return BatchView(
    input_ids_BxS=input_ids_BxS,
    latents_BxD=latents_BxD,
    mask_BxS=mask_BxS,
    all_mask_tokens_BxS=jnp.full_like(input_ids_BxS, options.mask_token_id),
    zeros_B=jnp.zeros(timestep_shape, jnp.float32),
    ones_B=jnp.ones(timestep_shape, jnp.float32),
    text_valid_BxS=text_valid_BxS,
    lengths_B=lengths_B.astype(jnp.int32),
    latent_valid_B=latent_valid_B,
    segments=segments,
  )


def noised_latents(
  view: BatchView, t_lat_B: jax.Array, noise_BxD: jax.Array, options: ObjectiveOptions
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(t_lat [B] float32, z_t [B,D], the prediction's target [B,D]): a T2L pass's noised input."""
  t_lat_B = jnp.asarray(t_lat_B, jnp.float32)
  z_t_BxD, target_BxD = diffusion.add_noise(
    options.schedule, view.latents_BxD, t_lat_B, noise_BxD, options.parameterization
  )
  return t_lat_B, z_t_BxD, target_BxD


def t2l_pass(view: BatchView, tokens_BxS: jax.Array, z_t_BxD: jax.Array, t_lat_B: jax.Array) -> ModelPass:
  """A T2L pass: text tokens at text t = 0, the noised latent at its t."""
  return ModelPass(tokens_BxS, z_t_BxD, view.zeros_B, t_lat_B, view.mask_BxS, view.segments)


def l2t_pass(view: BatchView, latents_BxD: jax.Array) -> ModelPass:
  """An L2T pass: all-[MASK] text at text t = 1, a clean latent (latent t = 0) as the condition.

  On a packed row every position is [MASK], padding included (its outputs are never read).
  """
  return ModelPass(view.all_mask_tokens_BxS, latents_BxD, view.ones_B, view.zeros_B, view.mask_BxS, view.segments)
