"""latentDLM's pretraining objectives (docs/reference.md, "Pretraining modes") as pure, jittable functions.

    draws = sample_draws(rng, batch_size, seq_len, latent_dim)
    loss, metrics = latentdlm_loss(params, batch, draws, mode='unconditional', model=model, options=options)

One model call per step, in one of three modes:
- `unconditional`: the text masked at a rate t_x ~ U[0,1) per row (each position independently, padding
  included) and the latent noised at an independent t_z ~ U[0,1); both terms.
- `l2t`: all-[MASK] text at text t = 1, the clean latent at latent t = 0; the text term.
- `t2l`: the clean text at text t = 0, the latent noised at t_z = 1; the latent term.

The text term is the cross-entropy of the masked positions, averaged over every masked position of
the batch (not per row), clamped to [0, 100], and 0 (left out) when nothing is masked. The latent
term is the clamped normalised MSE of the cycle objective, against the target of
model.latent_parameterization under model.latent_beta_schedule (the reference ignores both and always
trains epsilon on the cosine schedule). Total = text + loss.latent_loss_weight * latent.

With loss.condition_dropout p > 0, each row of a t2l or unconditional step is, with probability p, trained on
the null condition the reference's T2L guidance uses (all-[PAD] text with every text key masked out), so that
guidance has an unconditional prediction that was trained.

All randomness enters through `draws`, so a test can feed the reference's statement the same numbers;
nothing is substituted for non-finite values (the train step reports and skips them).
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgdlm_jax.model.passes import ModelPass
from lgdlm_jax.model.passes import run_passes
from lgdlm_jax.objective import diffusion
from lgdlm_jax.objective import terms as terms_lib
from lgdlm_jax.objective.mode_schedule import MODES
from lgdlm_jax.objective.options import ObjectiveOptions

Params = Mapping[str, Any]
# The masking schedule's floor: p(t) = (1 - MASK_EPS) * clip(t, MASK_EPS, 1).
MASK_EPS = 1e-4
# Added to the masked-position count before dividing, as the reference.
COUNT_EPS = 1e-8
TEXT_MODES = ('unconditional', 'l2t')
LATENT_MODES = ('unconditional', 't2l')


def sample_draws(rng: jax.Array, batch_size: int, seq_len: int, latent_dim: int) -> dict[str, jax.Array]:
  """Every random input of one latentdlm_loss call, in the reference's order: t_text [B], t_latent [B]
  (both U[0,1)), mask_uniform [B,S] (U[0,1)), noise [B,D] (N(0,1)); then null_uniform [B] (U[0,1), the
  rows loss.condition_dropout puts on the null condition) and the model's dropout_key. Every mode takes
  the same draws (l2t and t2l read only some), so the draws have one structure."""
  t_key, tz_key, mask_key, noise_key, null_key, dropout_key = jax.random.split(rng, 6)
  return dict(
    t_text=jax.random.uniform(t_key, (batch_size,), jnp.float32),
    t_latent=jax.random.uniform(tz_key, (batch_size,), jnp.float32),
    mask_uniform=jax.random.uniform(mask_key, (batch_size, seq_len), jnp.float32),
    noise=jax.random.normal(noise_key, (batch_size, latent_dim), jnp.float32),
    null_uniform=jax.random.uniform(null_key, (batch_size,), jnp.float32),
    dropout_key=dropout_key,
  )


def mask_probability(t_B: jax.Array) -> jax.Array:
  """The probability that a position is [MASK] at text time t: (1 - eps) * clip(t, eps, 1)."""
  return (1.0 - MASK_EPS) * jnp.clip(t_B, MASK_EPS, 1.0)


def masked_text(input_ids_BxS: jax.Array, t_B: jax.Array, uniform_BxS: jax.Array, mask_token_id: int) -> jax.Array:
  """The text at time t: each position becomes [MASK] where its uniform is below mask_probability(t)."""
  masked_BxS = uniform_BxS < mask_probability(t_B)[:, None]
  return jnp.where(masked_BxS, mask_token_id, input_ids_BxS)


def text_term(logits_BxSxV: jax.Array, targets_BxS: jax.Array, weights_BxS: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(term, accuracy): the cross-entropy averaged over the positions with weight 1 (clamped to [0, 100]; 0
  when there are none), and the argmax accuracy over them."""
  logits_BxSxV = logits_BxSxV.astype(jnp.float32)
  target_logit_BxS = jnp.take_along_axis(logits_BxSxV, targets_BxS[..., None], axis=-1)[..., 0]
  ce_BxS = jax.nn.logsumexp(logits_BxSxV, axis=-1) - target_logit_BxS
  count = jnp.sum(weights_BxS)
  term = jnp.clip(jnp.sum(weights_BxS * ce_BxS) / (jnp.maximum(count, 1.0) + COUNT_EPS), 0.0, terms_lib.TEXT_LOSS_MAX)
  hits = jnp.sum(weights_BxS * (jnp.argmax(logits_BxSxV, axis=-1) == targets_BxS))
  return jnp.where(count > 0, term, 0.0), hits / jnp.maximum(count, 1.0)


def _inputs(
  view: terms_lib.BatchView, draws: Mapping[str, jax.Array], mode: str, options: ObjectiveOptions
) -> tuple[ModelPass, jax.Array, jax.Array]:
  """(the model pass, the text positions the text term reads [B,S] float32, the latent target [B,D])."""
  if mode == 'l2t':
    weights_BxS = jnp.ones(view.input_ids_BxS.shape, jnp.float32)
    model_pass = terms_lib.l2t_pass(view, view.latents_BxD)
    return model_pass, weights_BxS, jnp.zeros_like(view.latents_BxD)
  if mode == 't2l':
    t_text_B, tokens_BxS, t_latent_B = view.zeros_B, view.input_ids_BxS, view.ones_B
  else:
    t_text_B, t_latent_B = jnp.asarray(draws['t_text'], jnp.float32), jnp.asarray(draws['t_latent'], jnp.float32)
    tokens_BxS = masked_text(view.input_ids_BxS, t_text_B, draws['mask_uniform'], options.mask_token_id)
  z_t_BxD, target_BxD = diffusion.add_noise(
    options.schedule, view.latents_BxD, t_latent_B, draws['noise'], options.parameterization
  )
  mask_BxS = view.mask_BxS
  if options.condition_dropout > 0:
    # The reference's null condition (its T2L guidance pass): all-[PAD] text, every text key masked out;
    # such a row has no [MASK] position, so it adds nothing to the text term.
    null_Bx1 = (draws['null_uniform'] < options.condition_dropout)[:, None]
    tokens_BxS = jnp.where(null_Bx1, options.pad_token_id, tokens_BxS)
    mask_BxS = ~null_Bx1 & (True if mask_BxS is None else mask_BxS)
  weights_BxS = (tokens_BxS == options.mask_token_id).astype(jnp.float32)
  return ModelPass(tokens_BxS, z_t_BxD, t_text_B, t_latent_B, mask_BxS), weights_BxS, target_BxD


def latentdlm_loss(
  params: Params,
  batch: Mapping[str, jax.Array],
  draws: Mapping[str, jax.Array],
  *,
  mode: str,
  model: nn.Module,
  options: ObjectiveOptions,
  deterministic: bool | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss of one batch in `mode` (static), and its metrics (float32 scalars, no gradient).

  batch: input_ids int [B,S], attention_mask bool [B,S] (absent = all true), latent [B,D] or [B,1,D].
  draws: from `sample_draws`. deterministic: None = dropout wherever the model has it (training).
  Metrics: loss, text_loss and text_accuracy (text modes), latent_loss and latent_pred_norm (latent
  modes), latent_norm (the clean latents' mean norm) and mode (its index in MODES).
  """
  if mode not in MODES:
    raise ValueError(f'mode={mode!r}: expected one of {", ".join(MODES)}')
  deterministic = (not options.dropout) if deterministic is None else deterministic
  view = terms_lib.batch_view(batch, options)
  model_pass, weights_BxS, target_BxD = _inputs(view, draws, mode, options)
  [(logits_BxSxV, latent_pred_BxD)] = run_passes(
    model,
    params,
    [model_pass],
    deterministic=deterministic,
    dropout_key=None if deterministic else draws['dropout_key'],
    text_logits_wanted=[mode in TEXT_MODES],
  )
  named: dict[str, jax.Array] = {}
  loss = jnp.zeros((), jnp.float32)
  if mode in TEXT_MODES:
    named['text_loss'], named['text_accuracy'] = text_term(logits_BxSxV, view.input_ids_BxS, weights_BxS)
    loss = loss + named['text_loss']
  if mode in LATENT_MODES:
    named['latent_loss'] = terms_lib.latent_term(latent_pred_BxD, target_BxD)
    named['latent_pred_norm'] = terms_lib.mean_l2_norm(latent_pred_BxD)
    loss = loss + options.latent_loss_weight * named['latent_loss']
  named.update(loss=loss, latent_norm=terms_lib.mean_l2_norm(view.latents_BxD), mode=MODES.index(mode))
  return loss, {k: jax.lax.stop_gradient(jnp.asarray(v, jnp.float32)) for k, v in named.items()}
