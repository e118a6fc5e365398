"""The cycle_vae training objective (docs/reference.md section 3) as a pure, jittable function.

    options = options_lib.from_config(config)   # once, when the step is made
    draws = draws_lib.sample_draws(rng, batch_size, latent_dim, options)
    terms = options.cycle.terms_at(step)   # host side: the cycle terms this step runs
    loss, metrics = cycle_vae_loss(params, batch, draws, step=step, model=model, options=options, terms=terms)

All randomness enters through `draws`, so a test can feed the very same noise to the PyTorch
reference. `cycle_vae_loss` runs the passes of the pass plan (lgdlm_jax.objective.plan) as at most
two model calls: base T2L and base L2T are independent, and so are cycle-text and cycle-latent once
the first round is done, so each round joins its passes along the batch axis into one call (same
params, so this is exact) instead of calling the model once per pass (see `run_passes` for the row
order); the text heads run only on the L2T rows. How the train step takes the gradient (joint, or
pass by pass) is lgdlm_jax.training.gradients' choice.

Which cycle terms run is a static choice (a `TermSet`, see lgdlm_jax.objective.cycle_schedule); a term that
does not run costs nothing and is absent from the metrics.

Conventions of the reference trainer (`cycle_vae_impl/trainers/cycle_vae_trainer.py`) kept here:
- Both latent timestep draws, the base T2L `t_lat` and the cycle-latent `t_lat2`, come from
  U(loss.cycle_latent_t_min, loss.cycle_latent_t_max) clamped to <= 0.9999 (`latent_t_mode:
  random`) or are exactly 1 (`full`, also spelt `ones` / `t1`); there is no separate base range.
- Both L2T passes (base and cycle-text) get the text attention mask; their input is all
  `tokenizer.mask_token_id`. Their cross-entropy nevertheless averages over ALL B*S positions
  (loss.text_positions='all', the default).
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
- loss.text_positions='valid' (required by packed rows, docs/reference.md): the L2T cross-entropy
  averages over real tokens only, and the length, which 'all' learns from the pad tail, is learned by
  the length head (model.length_head) from the clean latent as an extra term, length_loss.
- A packed batch ('segment_ids' present) runs every pass per segment: draws [B,K], x0 estimates
  [B,K,D], pseudo tokens per token; each term equals that of the same samples unpacked under 'valid'.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgdlm_jax.model.passes import ModelPass
from lgdlm_jax.model.passes import run_passes
from lgdlm_jax.objective import diffusion
from lgdlm_jax.objective import terms as terms_lib
from lgdlm_jax.objective.cycle_schedule import CYCLE_TERMS
from lgdlm_jax.objective.cycle_schedule import TermSet
from lgdlm_jax.objective.options import ObjectiveOptions
from lgdlm_jax.objective.plan import PlannedPass
from lgdlm_jax.objective.plan import pass_plan
from lgdlm_jax.objective.terms import BatchView

Params = Mapping[str, Any]
Outputs = dict[str, tuple[jax.Array | None, jax.Array]]


class CycleInputs(NamedTuple):
  """What the cycle round reads of the base round: the x0 estimate (a constant unless
  loss.cycle_stop_grad_latent is False) for cycle text, and pseudo tokens (never differentiable)
  for cycle latent; None for a term that does not run."""

  x0_cycle_BxD: jax.Array | None
  pseudo_tokens_BxS: jax.Array | None


def _run_round(
  params: Params,
  round_: tuple[PlannedPass, ...],
  inputs: Mapping[str, ModelPass],
  *,
  model: nn.Module,
  dropout_key: jax.Array | None,
  deterministic: bool,
) -> Outputs:
  """One joint model call on the passes of `round_`; {term: (text_logits or None, latent_pred)}."""
  outputs = run_passes(
    model,
    params,
    [inputs[p.term] for p in round_],
    deterministic=deterministic,
    dropout_key=dropout_key,
    text_logits_wanted=[p.text_logits for p in round_],
  )
  return {p.term: out for p, out in zip(round_, outputs)}


def _values(
  round_: tuple[PlannedPass, ...], outputs: Outputs, view: BatchView, targets: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
  """Each pass's clamped term: the text term of an L2T pass, the latent term (against `targets`) of a T2L pass."""
  return {
    p.value: terms_lib.text_term(outputs[p.term][0], view.input_ids_BxS, view.text_valid_BxS)
    if p.text_logits
    else terms_lib.latent_term(outputs[p.term][1], targets[p.term], view.latent_valid_B)
    for p in round_
  }


def _base_round(
  params: Params,
  view: BatchView,
  draws: Mapping[str, jax.Array],
  round_: tuple[PlannedPass, ...],
  *,
  model: nn.Module,
  options: ObjectiveOptions,
  terms: TermSet,
  dropout_key: jax.Array | None,
  deterministic: bool,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], CycleInputs]:
  """Round 1, one model call: base T2L (clean text -> noised latent) and base L2T (all-[MASK]
  text, clean latent). Returns its terms, the diagnostics and what the cycle round reads."""
  t_lat_B, z_t_BxD, target_BxD = terms_lib.noised_latents(view, draws['t_lat'], draws['noise'], options)
  inputs = dict(
    base_t2l=terms_lib.t2l_pass(view, view.input_ids_BxS, z_t_BxD, t_lat_B),
    base_l2t=terms_lib.l2t_pass(view, view.latents_BxD),
  )
  outputs = _run_round(params, round_, inputs, model=model, dropout_key=dropout_key, deterministic=deterministic)
  values = _values(round_, outputs, view, dict(base_t2l=target_BxD))
  latent_pred_BxD, l2t_logits_BxSxV = outputs['base_t2l'][1], outputs['base_l2t'][0]
  x0_pred_BxD = diffusion.predict_x0(options.schedule, z_t_BxD, t_lat_B, latent_pred_BxD, options.parameterization)
  diagnostics = dict(
    t_lat_mean=terms_lib.masked_mean(t_lat_B, view.latent_valid_B),
    latent_pred_norm=terms_lib.mean_l2_norm(latent_pred_BxD, view.latent_valid_B),
    x0_pred_norm=terms_lib.mean_l2_norm(x0_pred_BxD, view.latent_valid_B),
  )
  x0_cycle_BxD = None
  if terms.cycle_text:
    x0_cycle_BxD = jax.lax.stop_gradient(x0_pred_BxD) if options.cycle_stop_grad_latent else x0_pred_BxD
  pseudo_tokens_BxS = None
  if terms.cycle_latent:
    pseudo_tokens_BxS = terms_lib.sample_pseudo_tokens(
      l2t_logits_BxSxV, options.cycle_latent_sampling, draws['sample_key']
    )
  return values, diagnostics, CycleInputs(x0_cycle_BxD, pseudo_tokens_BxS)


def _cycle_round(
  params: Params,
  view: BatchView,
  draws: Mapping[str, jax.Array],
  round_: tuple[PlannedPass, ...],
  cycle_inputs: CycleInputs,
  *,
  model: nn.Module,
  options: ObjectiveOptions,
  terms: TermSet,
  dropout_key: jax.Array | None,
  deterministic: bool,
) -> dict[str, jax.Array]:
  """Round 2, one model call: cycle text (L2T on round 1's x0 estimate) and cycle latent (T2L on
  round 1's pseudo tokens with fresh t2 and noise2), each when `terms` runs it."""
  inputs, targets = {}, {}
  if terms.cycle_text:
    inputs['cycle_text'] = terms_lib.l2t_pass(view, cycle_inputs.x0_cycle_BxD)
  if terms.cycle_latent:
    t_lat2_B, z_t2_BxD, targets['cycle_latent'] = terms_lib.noised_latents(
      view, draws['t_lat2'], draws['noise2'], options
    )
    inputs['cycle_latent'] = terms_lib.t2l_pass(view, cycle_inputs.pseudo_tokens_BxS, z_t2_BxD, t_lat2_B)
  outputs = _run_round(params, round_, inputs, model=model, dropout_key=dropout_key, deterministic=deterministic)
  return _values(round_, outputs, view, targets)


def cycle_vae_terms(
  params: Params,
  batch: Mapping[str, jax.Array],
  draws: Mapping[str, jax.Array],
  *,
  model: nn.Module,
  options: ObjectiveOptions,
  terms: TermSet,
  deterministic: bool,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """(values, diagnostics) of one batch: {'<term>_loss': the clamped, unweighted term} for the base
  terms, the cycle terms `terms` selects and (model.length_head) the length head's length_loss
  (differentiable: the gradient-flow test takes each term's own gradient), and the diagnostic
  scalars t_lat_mean, latent_pred_norm, x0_pred_norm."""
  view = terms_lib.batch_view(batch, options)
  plan = pass_plan(options, terms)
  base_key, cycle_key = (None, None) if deterministic else jax.random.split(draws['dropout_key'])
  kwargs = dict(model=model, options=options, terms=terms, deterministic=deterministic)
  values, diagnostics, cycle_inputs = _base_round(params, view, draws, plan[0], dropout_key=base_key, **kwargs)
  for round_ in plan[1:]:
    values.update(_cycle_round(params, view, draws, round_, cycle_inputs, dropout_key=cycle_key, **kwargs))
  if options.length_head:
    values['length_loss'] = terms_lib.length_term(params, view, model=model)
  return values, diagnostics


def term_weights(options: ObjectiveOptions, step: int | jax.Array | None, terms: TermSet) -> dict[str, jax.Array]:
  """The weight of each term `terms` runs at `step` (the cycle ramps; None = their base weights)."""
  weights = dict(
    base_t2l_latent_loss=jnp.asarray(options.latent_loss_weight, jnp.float32),
    base_l2t_text_loss=jnp.ones((), jnp.float32),
  )
  cycle_weights = options.cycle.weights(step)
  weights.update({f'{term}_loss': cycle_weights[term] for term, on in zip(CYCLE_TERMS, terms) if on})
  if options.length_head:
    weights['length_loss'] = jnp.asarray(options.length_loss_weight, jnp.float32)
  return weights


def metrics(
  loss: jax.Array,
  values: Mapping[str, jax.Array],
  diagnostics: Mapping[str, jax.Array],
  weights: Mapping[str, jax.Array],
) -> dict[str, jax.Array]:
  """The loss, the terms, the diagnostics and each computed cycle term's weight, as float32 without gradient."""
  named = dict(loss=loss, **values, **diagnostics)
  for term in CYCLE_TERMS:
    if f'{term}_loss' in weights:
      named[f'{term}_weight'] = weights[f'{term}_loss']
  return {k: jax.lax.stop_gradient(jnp.asarray(v, jnp.float32)) for k, v in named.items()}


def resolve(options: ObjectiveOptions, terms: TermSet | None, deterministic: bool | None) -> tuple[TermSet, bool]:
  """The defaults of `cycle_vae_loss`: the configured terms, and dropout wherever the model has it."""
  terms = options.cycle.configured_terms() if terms is None else terms
  return terms, (not options.dropout) if deterministic is None else deterministic


def cycle_vae_loss(
  params: Params,
  batch: Mapping[str, jax.Array],
  draws: Mapping[str, jax.Array],
  *,
  step: int | jax.Array | None,
  model: nn.Module,
  options: ObjectiveOptions,
  terms: TermSet | None = None,
  deterministic: bool | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The cycle_vae loss of one batch, and its metrics (float32 scalars, no gradient).

  batch: input_ids int [B,S], attention_mask bool [B,S] (absent = all true), latent float
  [B,D] or [B,1,D]. draws: from lgdlm_jax.objective.draws.sample_draws. step: the training step
  for the cycle-weight ramps (a traced int is fine; None = base weights). terms: the cycle terms
  to compute (static; default: every term with a base weight above 0, weighted by its ramp at
  `step`, 0 included). deterministic: None derives it from the options, i.e. dropout is active
  (with draws['dropout_key']) whenever model.dropout > 0, as in training; pass True for evaluation.

  Metrics: loss, every computed term (`*_loss`), the weight of each computed cycle term
  (`cycle_text_weight`, `cycle_latent_weight`), and the diagnostics of `cycle_vae_terms`.
  """
  terms, deterministic = resolve(options, terms, deterministic)
  values, diagnostics = cycle_vae_terms(
    params, batch, draws, model=model, options=options, terms=terms, deterministic=deterministic
  )
  weights = term_weights(options, step, terms)
  loss = sum(weights[name] * value for name, value in values.items())
  return loss, metrics(loss, values, diagnostics, weights)
