"""The pieces the cycle_vae terms are made of, shared by the joint loss (lgdlm_jax.objective.cycle_vae)
and the pass-by-pass gradient (lgdlm_jax.training.gradients): the batch as every pass reads it, a
pass's inputs, the clamped terms, and the pseudo tokens."""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lgdlm_jax.model import layers
from lgdlm_jax.model.passes import ModelPass
from lgdlm_jax.objective import diffusion
from lgdlm_jax.objective.options import ObjectiveOptions

# F.normalize's eps: the norm is clamped to at least this before dividing.
NORMALIZE_EPS = 1e-8
LATENT_LOSS_MAX = 10.0
TEXT_LOSS_MAX = 100.0


def normalized_mse(pred_BxD: jax.Array, target_BxD: jax.Array) -> jax.Array:
  """Mean squared error between the l2-normalised prediction and target (mean over B and D)."""
  return jnp.mean(
    jnp.square(layers.l2_normalize(pred_BxD, eps=NORMALIZE_EPS) - layers.l2_normalize(target_BxD, eps=NORMALIZE_EPS))
  )


def text_cross_entropy(logits_BxSxV: jax.Array, targets_BxS: jax.Array) -> jax.Array:
  """Token cross-entropy averaged over ALL B*S positions, padding included (as the reference).

  Written as logsumexp - target logit rather than a gather from log_softmax so that the [B,S,V]
  log-probabilities are never materialised and XLA fuses the backward (softmax minus the
  scattered one-hot) into fewer passes over [B,S,V].
  """
  logits_BxSxV = logits_BxSxV.astype(jnp.float32)
  target_logit_BxS = jnp.take_along_axis(logits_BxSxV, targets_BxS[..., None], axis=-1)[..., 0]
  return jnp.mean(jax.nn.logsumexp(logits_BxSxV, axis=-1) - target_logit_BxS)


def latent_term(pred_BxD: jax.Array, target_BxD: jax.Array) -> jax.Array:
  """A T2L pass's loss term as the reference clamps it."""
  return jnp.clip(normalized_mse(pred_BxD, target_BxD), 0.0, LATENT_LOSS_MAX)


def text_term(logits_BxSxV: jax.Array, targets_BxS: jax.Array) -> jax.Array:
  """An L2T pass's loss term as the reference clamps it."""
  return jnp.clip(text_cross_entropy(logits_BxSxV, targets_BxS), 0.0, TEXT_LOSS_MAX)


def sample_pseudo_tokens(logits_BxSxV: jax.Array, sampling: str, key: jax.Array) -> jax.Array:
  """Pseudo tokens [B,S] int32 from L2T logits: argmax, or a categorical sample drawn with `key`."""
  logits_BxSxV = jax.lax.stop_gradient(logits_BxSxV)
  if sampling == 'argmax':
    return jnp.argmax(logits_BxSxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits_BxSxV, axis=-1).astype(jnp.int32)


def mean_l2_norm(x_BxD: jax.Array) -> jax.Array:
  return jnp.mean(jnp.linalg.norm(x_BxD, axis=-1))


class BatchView(NamedTuple):
  """The batch as every pass reads it."""

  input_ids_BxS: jax.Array
  latents_BxD: jax.Array
  mask_BxS: jax.Array | None  # None: no padding, the model skips masking
  all_mask_tokens_BxS: jax.Array
  zeros_B: jax.Array
  ones_B: jax.Array


def _latents_2d(latent: jax.Array) -> jax.Array:
  if latent.ndim == 3 and latent.shape[1] == 1:
    latent = latent[:, 0, :]
  if latent.ndim != 2:
    raise ValueError(f"batch['latent'] must be [B,D] or [B,1,D], got shape {latent.shape}")
  return latent.astype(jnp.float32)


def batch_view(batch: Mapping[str, jax.Array], mask_token_id: int) -> BatchView:
  input_ids_BxS = jnp.asarray(batch['input_ids']).astype(jnp.int32)
  mask = batch.get('attention_mask')
  batch_size = input_ids_BxS.shape[0]
  return BatchView(
    input_ids_BxS=input_ids_BxS,
    latents_BxD=_latents_2d(jnp.asarray(batch['latent'])),
    mask_BxS=None if mask is None else jnp.asarray(mask).astype(bool),
    all_mask_tokens_BxS=jnp.full_like(input_ids_BxS, mask_token_id),
    zeros_B=jnp.zeros((batch_size,), jnp.float32),
    ones_B=jnp.ones((batch_size,), jnp.float32),
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
  return ModelPass(tokens_BxS, z_t_BxD, view.zeros_B, t_lat_B, view.mask_BxS)


def l2t_pass(view: BatchView, latents_BxD: jax.Array) -> ModelPass:
  """An L2T pass: all-[MASK] text at text t = 1, a clean latent (latent t = 0) as the condition."""
  return ModelPass(view.all_mask_tokens_BxS, latents_BxD, view.ones_B, view.zeros_B, view.mask_BxS)
