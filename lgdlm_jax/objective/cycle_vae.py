"""The cycle_vae training objective (docs/reference.md section 3) as a pure, jittable function.

    draws = sample_draws(rng, batch_size, latent_dim, config)
    terms = cycle_schedule.from_config(config).terms_at(step)   # host side: the cycle terms this step runs
    loss, metrics = cycle_vae_loss(params, batch, draws, step=step, model=model, config=config, terms=terms)
    (loss, metrics), grads = cycle_vae_value_and_grad(params, batch, draws, step=step, model=model,
                                                      config=config, terms=terms)   # the train step's

All randomness enters through `draws`, so a test can feed the very same noise to the PyTorch
reference. `cycle_vae_loss` runs the passes as at most two model calls: base T2L and base L2T are
independent, and so are cycle-text and cycle-latent once the first round is done, so each round
joins its passes along the batch axis into one call (same params, so this is exact) instead of
calling the model once per pass (see `run_passes` for the row order); the text heads run only on
the L2T rows.
The train step takes the gradient pass by pass where that is exact (`cycle_vae_value_and_grad`,
training.round_gradients): a scan over the passes whose body takes one pass's value_and_grad, so
the backward pass holds one pass's activations at a time and the model is compiled once.

Which cycle terms run is a static choice (a `TermSet`, see lgdlm_jax.objective.cycle_schedule); a term that
does not run costs nothing and is absent from the metrics.

Conventions of the reference trainer (`cycle_vae_impl/trainers/cycle_vae_trainer.py`) kept here:
- Both latent timestep draws, the base T2L `t_lat` and the cycle-latent `t_lat2`, come from
  U(loss.cycle_latent_t_min, loss.cycle_latent_t_max) clamped to <= 0.9999 (`latent_t_mode:
  random`) or are exactly 1 (`full`, also spelt `ones` / `t1`); there is no separate base range.
- Both L2T passes (base and cycle-text) get the text attention mask; their input is all
  `tokenizer.mask_token_id`. Their cross-entropy nevertheless averages over ALL B*S positions.
- Ramp weight: 0 while step < warmup, then base * min(1, (step - warmup) / ramp) (so the first
  step after warmup still has weight 0), base at once when ramp = 0, and 0 whenever base <= 0.
- Metrics report the CLAMPED, UNWEIGHTED terms; latent_pred_norm and x0_pred_norm are the batch
  means of the per-example L2 norm over D of the base T2L prediction and of its x0 estimate.

Deliberate differences (docs/reference.md section 3):
- latent_pred is [B,1,D]; it is squeezed to [B,D] before any loss (the reference crashes there).
- Nothing is substituted for non-finite values: a NaN stays a NaN; the train step reports it.
- The cycle-latent term is computed only where its ramped weight is above 0, as in the reference;
  the cycle-text term likewise, where the reference always computes it (weighted by 0 during its
  warmup, which changes nothing but the cost). A term not computed is absent from the metrics,
  where the reference logs 0.
- Under gradient accumulation every micro-batch of one optimizer update runs the same terms: a
  term whose warmup ends inside an update is computed, with its ramped weight (0 on the
  micro-batches before the warmup's end, as in the reference), on every micro-batch of that update.
- `loss.cycle_every` (cycle terms on every N-th optimizer update only) has no counterpart in the
  reference; 1 (the default) is the reference's behaviour.
- The reference also logs `cycle_latent_sampling` (a string); metrics here are float32 scalars only.
"""

from collections.abc import Mapping
import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lgdlm_jax.model import layers
from lgdlm_jax.model.passes import ModelPass
from lgdlm_jax.model.passes import run_passes
from lgdlm_jax.objective import cycle_schedule
from lgdlm_jax.objective import diffusion
from lgdlm_jax.objective.cycle_schedule import CYCLE_TERMS
from lgdlm_jax.objective.cycle_schedule import TermSet

# The reference keeps t < 1 in random mode so that sqrt(abar) never reaches its smallest value.
LATENT_T_MAX = diffusion.MAX_RANDOM_T
# F.normalize's eps: the norm is clamped to at least this before dividing.
NORMALIZE_EPS = 1e-8
LATENT_LOSS_MAX = 10.0
TEXT_LOSS_MAX = 100.0

Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """The static (trace-time) choices of the objective, read from a validated config."""
  latent_loss_weight: float
  cycle: cycle_schedule.CycleSchedule
  cycle_latent_sampling: str
  cycle_stop_grad_latent: bool
  mask_token_id: int
  parameterization: str


def loss_options(config: ml_collections.ConfigDict) -> LossOptions:
  """The objective's settings from config.loss, model.latent_parameterization and tokenizer.mask_token_id."""
  return LossOptions(
      latent_loss_weight=config.loss.latent_loss_weight,
      cycle=cycle_schedule.from_config(config),
      cycle_latent_sampling=config.loss.cycle_latent_sampling,
      cycle_stop_grad_latent=config.loss.cycle_stop_grad_latent,
      mask_token_id=config.tokenizer.mask_token_id,
      parameterization=config.model.latent_parameterization,
  )


class PlannedPass(NamedTuple):
  """One model pass of the objective: the loss term that reads it, and whether it reads its text logits."""
  term: str
  text_logits: bool


def pass_plan(opts: LossOptions, terms: TermSet | None = None) -> tuple[tuple[PlannedPass, ...], ...]:
  """The passes cycle_vae_loss runs for `terms` (default: the configured ones), round by round; each
  round is one joint model call.

  Round 1: base T2L (clean text -> noised latent) and base L2T (all-[MASK] text, clean latent).
  Round 2, when a cycle term runs: cycle text (L2T on round 1's x0 estimate) and cycle latent (T2L
  on round 1's pseudo tokens). The benchmark counts model FLOPs from this same plan.
  """
  terms = opts.cycle.configured_terms() if terms is None else terms
  round1 = (PlannedPass('base_t2l', False), PlannedPass('base_l2t', True))
  round2 = ((PlannedPass('cycle_text', True),) if terms.cycle_text else ()) + (
      (PlannedPass('cycle_latent', False),) if terms.cycle_latent else ())
  return (round1, round2) if round2 else (round1,)


# ---------------------------------------------------------------------------------------------
# Random draws.


def sample_latent_t(rng: jax.Array, batch_size: int, config: ml_collections.ConfigDict) -> jax.Array:
  """Latent timesteps t_B: U(cycle_latent_t_min, cycle_latent_t_max) clamped to <= 0.9999, or ones."""
  loss = config.loss
  if loss.latent_t_mode == 'full':
    return jnp.ones((batch_size,), jnp.float32)
  t_B = loss.cycle_latent_t_min + (loss.cycle_latent_t_max - loss.cycle_latent_t_min) * jax.random.uniform(
      rng, (batch_size,), jnp.float32)
  return jnp.minimum(t_B, LATENT_T_MAX)


def sample_draws(rng: jax.Array, batch_size: int, latent_dim: int,
                 config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Every random input of one cycle_vae_loss call.

  t_lat [B], noise [B,D]: the base T2L pass; t_lat2 [B], noise2 [B,D]: the cycle-latent pass
  (drawn even when that term is off, so the draws keep one structure); sample_key: categorical
  pseudo tokens; dropout_key: the model's dropout.
  """
  t_key, noise_key, t2_key, noise2_key, sample_key, dropout_key = jax.random.split(rng, 6)
  return dict(
      t_lat=sample_latent_t(t_key, batch_size, config),
      noise=jax.random.normal(noise_key, (batch_size, latent_dim), jnp.float32),
      t_lat2=sample_latent_t(t2_key, batch_size, config),
      noise2=jax.random.normal(noise2_key, (batch_size, latent_dim), jnp.float32),
      sample_key=sample_key,
      dropout_key=dropout_key,
  )


# ---------------------------------------------------------------------------------------------
# Pieces of the objective.


def normalized_mse(pred_BxD: jax.Array, target_BxD: jax.Array) -> jax.Array:
  """Mean squared error between the l2-normalised prediction and target (mean over B and D)."""
  return jnp.mean(jnp.square(layers.l2_normalize(pred_BxD, eps=NORMALIZE_EPS)
                             - layers.l2_normalize(target_BxD, eps=NORMALIZE_EPS)))


def text_cross_entropy(logits_BxSxV: jax.Array, targets_BxS: jax.Array) -> jax.Array:
  """Token cross-entropy averaged over ALL B*S positions, padding included (as the reference).

  Written as logsumexp - target logit rather than a gather from log_softmax: the [B,S,V]
  log-probabilities are never materialised, and XLA fuses the backward (softmax minus the
  scattered one-hot) into fewer passes over [B,S,V]; forward + backward ran 2.5x faster on CPU.
  """
  logits_BxSxV = logits_BxSxV.astype(jnp.float32)
  target_logit_BxS = jnp.take_along_axis(logits_BxSxV, targets_BxS[..., None], axis=-1)[..., 0]
  return jnp.mean(jax.nn.logsumexp(logits_BxSxV, axis=-1) - target_logit_BxS)


def sample_pseudo_tokens(logits_BxSxV: jax.Array, sampling: str, key: jax.Array) -> jax.Array:
  """Pseudo tokens [B,S] int32 from L2T logits: argmax, or a categorical sample drawn with `key`."""
  logits_BxSxV = jax.lax.stop_gradient(logits_BxSxV)
  if sampling == 'argmax':
    return jnp.argmax(logits_BxSxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits_BxSxV, axis=-1).astype(jnp.int32)


def _latents_2d(latent: jax.Array) -> jax.Array:
  if latent.ndim == 3 and latent.shape[1] == 1:
    latent = latent[:, 0, :]
  if latent.ndim != 2:
    raise ValueError(f"batch['latent'] must be [B,D] or [B,1,D], got shape {latent.shape}")
  return latent.astype(jnp.float32)


def _mean_l2_norm(x_BxD: jax.Array) -> jax.Array:
  return jnp.mean(jnp.linalg.norm(x_BxD, axis=-1))


def _latent_term(pred_BxD: jax.Array, target_BxD: jax.Array) -> jax.Array:
  """A T2L pass's loss term as the reference clamps it."""
  return jnp.clip(normalized_mse(pred_BxD, target_BxD), 0.0, LATENT_LOSS_MAX)


def _text_term(logits_BxSxV: jax.Array, targets_BxS: jax.Array) -> jax.Array:
  """An L2T pass's loss term as the reference clamps it."""
  return jnp.clip(text_cross_entropy(logits_BxSxV, targets_BxS), 0.0, TEXT_LOSS_MAX)


# ---------------------------------------------------------------------------------------------
# The objective.


class _BatchView(NamedTuple):
  """The batch as every pass reads it."""
  input_ids_BxS: jax.Array
  latents_BxD: jax.Array
  mask_BxS: jax.Array | None  # None: no padding, the model skips masking
  all_mask_tokens_BxS: jax.Array
  zeros_B: jax.Array
  ones_B: jax.Array


class CycleInputs(NamedTuple):
  """What the cycle round reads of the base round: the x0 estimate (a constant unless
  loss.cycle_stop_grad_latent is False) for cycle text, and pseudo tokens (never differentiable)
  for cycle latent; None for a term that does not run."""
  x0_cycle_BxD: jax.Array | None
  pseudo_tokens_BxS: jax.Array | None


def _batch_view(batch: Mapping[str, jax.Array], mask_token_id: int) -> _BatchView:
  input_ids_BxS = jnp.asarray(batch['input_ids']).astype(jnp.int32)
  mask = batch.get('attention_mask')
  batch_size = input_ids_BxS.shape[0]
  return _BatchView(
      input_ids_BxS=input_ids_BxS,
      latents_BxD=_latents_2d(jnp.asarray(batch['latent'])),
      mask_BxS=None if mask is None else jnp.asarray(mask).astype(bool),
      all_mask_tokens_BxS=jnp.full_like(input_ids_BxS, mask_token_id),
      zeros_B=jnp.zeros((batch_size,), jnp.float32),
      ones_B=jnp.ones((batch_size,), jnp.float32))


def _noised_latents(view: _BatchView, t_lat_B: jax.Array, noise_BxD: jax.Array,
                    config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(t_lat [B] float32, z_t [B,D], the prediction's target [B,D]): a T2L pass's noised input."""
  t_lat_B = jnp.asarray(t_lat_B, jnp.float32)
  schedule = diffusion.schedule_from_config(config.model)
  z_t_BxD, target_BxD = diffusion.add_noise(schedule, view.latents_BxD, t_lat_B, noise_BxD,
                                            config.model.latent_parameterization)
  return t_lat_B, z_t_BxD, target_BxD


def _base_round(params: Params, view: _BatchView, draws: Mapping[str, jax.Array], *, model: nn.Module,
                config: ml_collections.ConfigDict, terms: TermSet, dropout_key: jax.Array | None,
                deterministic: bool) -> tuple[dict[str, jax.Array], dict[str, jax.Array], CycleInputs]:
  """Round 1, one model call: base T2L (clean text -> noised latent) and base L2T (all-[MASK]
  text, clean latent). Returns its terms, the diagnostics and what the cycle round reads."""
  opts = loss_options(config)
  schedule = diffusion.schedule_from_config(config.model)
  t_lat_B, z_t_BxD, target_BxD = _noised_latents(view, draws['t_lat'], draws['noise'], config)
  (_, latent_pred_BxD), (l2t_logits_BxSxV, _) = run_passes(
      model, params,
      [ModelPass(view.input_ids_BxS, z_t_BxD, view.zeros_B, t_lat_B, view.mask_BxS),
       ModelPass(view.all_mask_tokens_BxS, view.latents_BxD, view.ones_B, view.zeros_B, view.mask_BxS)],
      deterministic=deterministic, dropout_key=dropout_key,
      text_logits_wanted=[p.text_logits for p in pass_plan(opts, terms)[0]])
  values = dict(base_t2l_latent_loss=_latent_term(latent_pred_BxD, target_BxD),
                base_l2t_text_loss=_text_term(l2t_logits_BxSxV, view.input_ids_BxS))
  x0_pred_BxD = diffusion.predict_x0(schedule, z_t_BxD, t_lat_B, latent_pred_BxD, opts.parameterization)
  diagnostics = dict(t_lat_mean=jnp.mean(t_lat_B), latent_pred_norm=_mean_l2_norm(latent_pred_BxD),
                     x0_pred_norm=_mean_l2_norm(x0_pred_BxD))
  x0_cycle_BxD = None
  if terms.cycle_text:
    x0_cycle_BxD = jax.lax.stop_gradient(x0_pred_BxD) if opts.cycle_stop_grad_latent else x0_pred_BxD
  pseudo_tokens_BxS = None
  if terms.cycle_latent:
    pseudo_tokens_BxS = sample_pseudo_tokens(l2t_logits_BxSxV, opts.cycle_latent_sampling, draws['sample_key'])
  return values, diagnostics, CycleInputs(x0_cycle_BxD, pseudo_tokens_BxS)


def _cycle_round(params: Params, view: _BatchView, draws: Mapping[str, jax.Array], cycle_inputs: CycleInputs, *,
                 model: nn.Module, config: ml_collections.ConfigDict, terms: TermSet,
                 dropout_key: jax.Array | None, deterministic: bool) -> dict[str, jax.Array]:
  """Round 2, one model call: cycle text (L2T on round 1's x0 estimate) and cycle latent (T2L on
  round 1's pseudo tokens with fresh t2 and noise2), each when `terms` runs it; {} when neither does."""
  opts = loss_options(config)
  passes = []
  if terms.cycle_text:
    passes.append(ModelPass(view.all_mask_tokens_BxS, cycle_inputs.x0_cycle_BxD, view.ones_B, view.zeros_B,
                            view.mask_BxS))
  if terms.cycle_latent:
    t_lat2_B, z_t2_BxD, target2_BxD = _noised_latents(view, draws['t_lat2'], draws['noise2'], config)
    passes.append(ModelPass(cycle_inputs.pseudo_tokens_BxS, z_t2_BxD, view.zeros_B, t_lat2_B, view.mask_BxS))
  if not passes:
    return {}
  outputs = iter(run_passes(model, params, passes, deterministic=deterministic, dropout_key=dropout_key,
                            text_logits_wanted=[p.text_logits for p in pass_plan(opts, terms)[1]]))
  values = {}
  if terms.cycle_text:
    values['cycle_text_loss'] = _text_term(next(outputs)[0], view.input_ids_BxS)
  if terms.cycle_latent:
    values['cycle_latent_loss'] = _latent_term(next(outputs)[1], target2_BxD)
  return values


def cycle_vae_terms(
    params: Params,
    batch: Mapping[str, jax.Array],
    draws: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    config: ml_collections.ConfigDict,
    terms: TermSet,
    deterministic: bool,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """(values, diagnostics) of one batch: {'<term>_loss': the clamped, unweighted term} for the base
  terms and the cycle terms `terms` selects (differentiable: the gradient-flow test takes each
  term's own gradient), and the diagnostic scalars t_lat_mean, latent_pred_norm, x0_pred_norm."""
  view = _batch_view(batch, config.tokenizer.mask_token_id)
  base_key, cycle_key = (None, None) if deterministic else jax.random.split(draws['dropout_key'])
  kwargs = dict(model=model, config=config, terms=terms, deterministic=deterministic)
  values, diagnostics, cycle_inputs = _base_round(params, view, draws, dropout_key=base_key, **kwargs)
  values.update(_cycle_round(params, view, draws, cycle_inputs, dropout_key=cycle_key, **kwargs))
  return values, diagnostics


def term_weights(opts: LossOptions, step: int | jax.Array | None, terms: TermSet) -> dict[str, jax.Array]:
  """The weight of each term `terms` runs at `step` (the cycle ramps; None = their base weights)."""
  weights = dict(base_t2l_latent_loss=jnp.asarray(opts.latent_loss_weight, jnp.float32),
                 base_l2t_text_loss=jnp.ones((), jnp.float32))
  cycle_weights = opts.cycle.weights(step)
  weights.update({f'{term}_loss': cycle_weights[term] for term, on in zip(CYCLE_TERMS, terms) if on})
  return weights


def _weighted_sum(values: Mapping[str, jax.Array], weights: Mapping[str, jax.Array]) -> jax.Array:
  return sum(weights[name] * value for name, value in values.items())


def _metrics(loss: jax.Array, values: Mapping[str, jax.Array], diagnostics: Mapping[str, jax.Array],
             weights: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  metrics = dict(loss=loss, **values, **diagnostics)
  for term in CYCLE_TERMS:
    if f'{term}_loss' in weights:
      metrics[f'{term}_weight'] = weights[f'{term}_loss']
  return {k: jax.lax.stop_gradient(jnp.asarray(v, jnp.float32)) for k, v in metrics.items()}


def _resolve(config: ml_collections.ConfigDict, terms: TermSet | None,
             deterministic: bool | None) -> tuple[LossOptions, TermSet, bool]:
  opts = loss_options(config)
  terms = opts.cycle.configured_terms() if terms is None else terms
  if deterministic is None:
    deterministic = not config.model.dropout > 0.0
  return opts, terms, deterministic


def cycle_vae_loss(
    params: Params,
    batch: Mapping[str, jax.Array],
    draws: Mapping[str, jax.Array],
    *,
    step: int | jax.Array | None,
    model: nn.Module,
    config: ml_collections.ConfigDict,
    terms: TermSet | None = None,
    deterministic: bool | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The cycle_vae loss of one batch, and its metrics (float32 scalars, no gradient).

  batch: input_ids int [B,S], attention_mask bool [B,S] (absent = all true), latent float
  [B,D] or [B,1,D]. draws: from `sample_draws`. step: the training step for the cycle-weight
  ramps (a traced int is fine; None = base weights). terms: the cycle terms to compute (static;
  default: every term with a base weight above 0, weighted by its ramp at `step`, 0 included).
  deterministic: None derives it from the config, i.e. dropout is active (with
  draws['dropout_key']) whenever model.dropout > 0, as in training; pass True for evaluation.

  Metrics: loss, every computed term (`*_loss`), the weight of each computed cycle term
  (`cycle_text_weight`, `cycle_latent_weight`), and the diagnostics of `cycle_vae_terms`.
  """
  opts, terms, deterministic = _resolve(config, terms, deterministic)
  values, diagnostics = cycle_vae_terms(params, batch, draws, model=model, config=config, terms=terms,
                                        deterministic=deterministic)
  weights = term_weights(opts, step, terms)
  loss = _weighted_sum(values, weights)
  return loss, _metrics(loss, values, diagnostics, weights)


def pass_by_pass_gradient(config: ml_collections.ConfigDict) -> bool:
  """Whether training.round_gradients (validated by lgdlm_jax.config) asks for one pass's gradient at a time."""
  mode = config.training.round_gradients
  return config.loss.cycle_stop_grad_latent if mode == 'auto' else mode == 'sequential'


def cycle_vae_value_and_grad(
    params: Params,
    batch: Mapping[str, jax.Array],
    draws: Mapping[str, jax.Array],
    *,
    step: int | jax.Array | None,
    model: nn.Module,
    config: ml_collections.ConfigDict,
    terms: TermSet | None = None,
) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Params]:
  """((loss, metrics), gradient) of `cycle_vae_loss`, as the train step needs them.

  With training.round_gradients sequential (see `pass_by_pass_gradient`) the gradient is taken one
  model pass at a time (`_pass_by_pass_value_and_grad`): the backward pass holds the activations
  of one pass of B rows instead of all passes' (2B rows per round, both rounds), and the model's
  forward and backward are compiled once for every pass. This is the same gradient because the
  passes read each other only through constants (the cycle passes read round 1's stop-gradient
  x0 and its discrete pseudo tokens): the gradient of the sum is the sum of the passes'
  gradients with those inputs held fixed. With loss.cycle_stop_grad_latent False the cycle-text
  gradient flows back into the base T2L pass, and only the joint gradient is right (config
  validation refuses 'sequential' then).
  """
  opts, terms, deterministic = _resolve(config, terms, None)
  weights = term_weights(opts, step, terms)
  if not pass_by_pass_gradient(config):
    loss_fn = functools.partial(cycle_vae_loss, step=step, model=model, config=config, terms=terms,
                                deterministic=deterministic)
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch, draws)
  return _pass_by_pass_value_and_grad(params, _batch_view(batch, opts.mask_token_id), draws, weights, model=model,
                                      config=config, terms=terms, deterministic=deterministic)


class _ScannedPass(NamedTuple):
  """One model pass of the pass-by-pass gradient, stacked with the others as the rows of a scan.

  A cycle pass's input from round 1 is not known when the scan starts: its tokens_BxS (cycle
  latent) or latents_BxD (cycle text) are placeholders, replaced in the scan by the pseudo tokens
  or the x0 estimate that the base passes leave in the carry.
  """
  tokens_BxS: jax.Array
  latents_BxD: jax.Array
  text_t_B: jax.Array
  latent_t_B: jax.Array
  target_BxD: jax.Array  # the T2L passes' target (a placeholder in the L2T passes)
  latent_weight: jax.Array  # 0 in the L2T passes
  text_weight: jax.Array  # 0 in the T2L passes
  is_l2t: jax.Array  # the text heads run (the T2L passes skip them)
  is_base: jax.Array  # round 1: leaves its x0 estimate (T2L) or pseudo tokens (L2T) in the carry
  tokens_from_base: jax.Array  # cycle latent: reads the base L2T pass's pseudo tokens
  latents_from_base: jax.Array  # cycle text: reads the base T2L pass's x0 estimate
  dropout_key: jax.Array


def _scanned_passes(view: _BatchView, draws: Mapping[str, jax.Array], weights: Mapping[str, jax.Array],
                    config: ml_collections.ConfigDict, terms: TermSet, deterministic: bool) -> _ScannedPass:
  """The passes of `terms` in scan order: base T2L, base L2T, then cycle latent and cycle text
  where they run."""
  zero, yes, no = jnp.zeros((), jnp.float32), jnp.array(True), jnp.array(False)
  zeros_BxD = jnp.zeros_like(view.latents_BxD)

  def t2l(t_lat_B, noise_BxD, weight, from_base):
    t_lat_B, z_t_BxD, target_BxD = _noised_latents(view, t_lat_B, noise_BxD, config)
    return dict(tokens_BxS=view.input_ids_BxS, latents_BxD=z_t_BxD, text_t_B=view.zeros_B, latent_t_B=t_lat_B,
                target_BxD=target_BxD, latent_weight=weight, text_weight=zero, is_l2t=no, is_base=~from_base,
                tokens_from_base=from_base, latents_from_base=no)

  def l2t(weight, from_base):
    return dict(tokens_BxS=view.all_mask_tokens_BxS, latents_BxD=view.latents_BxD, text_t_B=view.ones_B,
                latent_t_B=view.zeros_B, target_BxD=zeros_BxD, latent_weight=zero, text_weight=weight, is_l2t=yes,
                is_base=~from_base, tokens_from_base=no, latents_from_base=from_base)

  passes = [t2l(draws['t_lat'], draws['noise'], weights['base_t2l_latent_loss'], no),
            l2t(weights['base_l2t_text_loss'], no)]
  if terms.cycle_latent:
    passes.append(t2l(draws['t_lat2'], draws['noise2'], weights['cycle_latent_loss'], yes))
  if terms.cycle_text:
    passes.append(l2t(weights['cycle_text_loss'], yes))
  # Deterministic passes never read their key; the placeholder keeps the scan's inputs one structure.
  keys = jax.random.split(jax.random.key(0) if deterministic else draws['dropout_key'], len(passes))
  return _ScannedPass(**jax.tree.map(lambda *xs: jnp.stack(xs), *passes), dropout_key=keys)


def _pass_by_pass_value_and_grad(
    params: Params, view: _BatchView, draws: Mapping[str, jax.Array], weights: Mapping[str, jax.Array], *,
    model: nn.Module, config: ml_collections.ConfigDict, terms: TermSet,
    deterministic: bool) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Params]:
  """The objective's value and gradient as a `lax.scan` over its passes (see `_scanned_passes`),
  whose body takes one pass's value_and_grad and adds it to the gradient in the carry.

  Every pass runs the same program: T2L and L2T passes differ only in their inputs, in which
  term is weighted by 0 and in whether the text heads run (a run-time switch, so the T2L passes
  never pay the vocabulary projection). A scan iteration ends before the next starts, so the
  backward pass holds one pass's activations at a time.
  """
  opts = loss_options(config)
  schedule = diffusion.schedule_from_config(config.model)

  def pass_loss(p, this: _ScannedPass, tokens_BxS, latents_BxD):
    [(logits_BxSxV, latent_pred_BxD)] = run_passes(
        model, p, [ModelPass(tokens_BxS, latents_BxD, this.text_t_B, this.latent_t_B, view.mask_BxS)],
        deterministic=deterministic, dropout_key=None if deterministic else this.dropout_key,
        text_heads_on=this.is_l2t)
    latent_term = _latent_term(latent_pred_BxD, this.target_BxD)
    # Under the same switch as the text heads: the cross-entropy of a T2L pass's zero logits would
    # cost its reductions over [B,S,V] at run time, and XLA constant-folds them at compile time
    # (41 of 126 s compiling the cluster config for a v5e-8).
    text_term = jax.lax.cond(
        this.is_l2t,
        lambda: _text_term(logits_BxSxV, view.input_ids_BxS),
        lambda: jnp.zeros((), jnp.float32))
    loss = this.latent_weight * latent_term + this.text_weight * text_term
    return loss, (latent_term, text_term, jax.lax.stop_gradient((logits_BxSxV, latent_pred_BxD)))

  def body(carry, this: _ScannedPass):
    grads, pseudo_tokens_BxS, x0_BxD = carry
    tokens_BxS = jnp.where(this.tokens_from_base, pseudo_tokens_BxS, this.tokens_BxS)
    latents_BxD = jnp.where(this.latents_from_base, x0_BxD, this.latents_BxD)
    (loss, (latent_term, text_term, (logits_BxSxV, latent_pred_BxD))), pass_grads = jax.value_and_grad(
        pass_loss, has_aux=True)(params, this, tokens_BxS, latents_BxD)
    pass_x0_BxD = diffusion.predict_x0(schedule, latents_BxD, this.latent_t_B, latent_pred_BxD,
                                       opts.parameterization)
    if terms.cycle_latent:
      pseudo_tokens_BxS = jax.lax.cond(
          this.is_base & this.is_l2t,
          lambda: sample_pseudo_tokens(logits_BxSxV, opts.cycle_latent_sampling, draws['sample_key']),
          lambda: pseudo_tokens_BxS)
    x0_BxD = jnp.where(this.is_base & ~this.is_l2t, pass_x0_BxD, x0_BxD)
    carry = (jax.tree.map(jnp.add, grads, pass_grads), pseudo_tokens_BxS, x0_BxD)
    return carry, (loss, latent_term, text_term, _mean_l2_norm(latent_pred_BxD), _mean_l2_norm(pass_x0_BxD))

  passes = _scanned_passes(view, draws, weights, config, terms, deterministic)
  init = (jax.tree.map(jnp.zeros_like, params), view.input_ids_BxS, view.latents_BxD)
  (grads, _, _), (pass_losses, latent_terms, text_terms, pred_norms, x0_norms) = jax.lax.scan(body, init, passes)
  # The scan order of _scanned_passes: base T2L, base L2T, [cycle latent], [cycle text].
  values = dict(base_t2l_latent_loss=latent_terms[0], base_l2t_text_loss=text_terms[1])
  if terms.cycle_latent:
    values['cycle_latent_loss'] = latent_terms[2]
  if terms.cycle_text:
    values['cycle_text_loss'] = text_terms[-1]
  diagnostics = dict(t_lat_mean=jnp.mean(passes.latent_t_B[0]), latent_pred_norm=pred_norms[0],
                     x0_pred_norm=x0_norms[0])
  loss = jnp.sum(pass_losses)
  return (loss, _metrics(loss, values, diagnostics, weights)), grads
