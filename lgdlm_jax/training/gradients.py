"""The train step's gradient of the objective, and its memory strategy (training.round_gradients).

    mode = round_gradients(config)   # 'joint' or 'sequential' (pass by pass), decided once
    (loss, metrics), grads = value_and_grad(params, batch, draws, step=step, model=model, options=options,
                                            terms=terms, mode=mode)

'joint' differentiates lgdlm_jax.objective.cycle_vae.cycle_vae_loss as it is: its rounds are joint
model calls, and the backward pass holds the activations of every pass at once. 'sequential'
takes the same gradient one model pass at a time: a `lax.scan` over the passes of the objective's
pass plan (lgdlm_jax.objective.plan) whose body takes one pass's value_and_grad, so the backward
pass holds one pass's activations (B rows, not 2B rows per round for both rounds) and the model's
forward and backward are compiled once for every pass.

That is the same gradient because the passes read each other only through constants (the cycle
passes read round 1's stop-gradient x0 and its discrete pseudo tokens): the gradient of the sum is
the sum of the passes' gradients with those inputs held fixed. With loss.cycle_stop_grad_latent
False the cycle-text gradient flows back into the base T2L pass and only the joint gradient is
right (config validation refuses 'sequential' then).
"""

from collections.abc import Mapping
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lgdlm_jax.model.passes import ModelPass
from lgdlm_jax.model.passes import run_passes
from lgdlm_jax.objective import cycle_vae
from lgdlm_jax.objective import diffusion
from lgdlm_jax.objective import terms as terms_lib
from lgdlm_jax.objective.cycle_schedule import TermSet
from lgdlm_jax.objective.options import ObjectiveOptions
from lgdlm_jax.objective.plan import in_order
from lgdlm_jax.objective.plan import pass_plan
from lgdlm_jax.objective.terms import BatchView

Params = Mapping[str, Any]
Result = tuple[tuple[jax.Array, dict[str, jax.Array]], Params]


def round_gradients(config: ml_collections.ConfigDict) -> str:
  """training.round_gradients (validated by lgdlm_jax.config) with 'auto' resolved: 'sequential'
  (pass by pass) where that is the exact gradient, i.e. with loss.cycle_stop_grad_latent, else 'joint'."""
  mode = config.training.round_gradients
  if mode == 'auto':
    return 'sequential' if config.loss.cycle_stop_grad_latent else 'joint'
  return mode


def value_and_grad(
  params: Params,
  batch: Mapping[str, jax.Array],
  draws: Mapping[str, jax.Array],
  *,
  step: int | jax.Array | None,
  model: nn.Module,
  options: ObjectiveOptions,
  terms: TermSet | None = None,
  mode: str,
) -> Result:
  """((loss, metrics), gradient) of `cycle_vae_loss` with dropout as in training, taken `mode`-wise
  ('joint' or 'sequential', see `round_gradients`)."""
  terms, deterministic = cycle_vae.resolve(options, terms, None)
  if mode == 'joint':
    loss_fn = functools.partial(
      cycle_vae.cycle_vae_loss, step=step, model=model, options=options, terms=terms, deterministic=deterministic
    )
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch, draws)
  return _sequential_value_and_grad(
    params, batch, draws, step=step, model=model, options=options, terms=terms, deterministic=deterministic
  )


class _ScannedPass(NamedTuple):
  """One model pass of the sequential gradient, stacked with the others as the rows of a scan.

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
  dropout_key: jax.Array


def _scanned_passes(
  view: BatchView,
  draws: Mapping[str, jax.Array],
  weights: Mapping[str, jax.Array],
  options: ObjectiveOptions,
  terms: TermSet,
  deterministic: bool,
) -> _ScannedPass:
  """The rows of the plan's passes, in the plan's order."""
  zero = jnp.zeros((), jnp.float32)

  def t2l(t_name: str, noise_name: str) -> tuple[ModelPass, jax.Array]:
    t_lat_B, z_t_BxD, target_BxD = terms_lib.noised_latents(view, draws[t_name], draws[noise_name], options)
    return terms_lib.t2l_pass(view, view.input_ids_BxS, z_t_BxD, t_lat_B), target_BxD

  l2t = lambda: (terms_lib.l2t_pass(view, view.latents_BxD), jnp.zeros_like(view.latents_BxD))
  inputs = dict(
    base_t2l=lambda: t2l('t_lat', 'noise'), base_l2t=l2t, cycle_text=l2t, cycle_latent=lambda: t2l('t_lat2', 'noise2')
  )
  rows = []
  for planned in in_order(pass_plan(options, terms)):
    model_pass, target_BxD = inputs[planned.term]()
    weight = weights[planned.value]
    rows.append(
      dict(
        tokens_BxS=model_pass.tokens_BxS,
        latents_BxD=model_pass.latents_BxD,
        text_t_B=model_pass.text_t_B,
        latent_t_B=model_pass.latent_t_B,
        target_BxD=target_BxD,
        latent_weight=zero if planned.text_logits else weight,
        text_weight=weight if planned.text_logits else zero,
        is_l2t=jnp.array(planned.text_logits),
        is_base=jnp.array(planned.is_base),
      )
    )
  # Deterministic passes never read their key; the placeholder keeps the scan's inputs one structure.
  keys = jax.random.split(jax.random.key(0) if deterministic else draws['dropout_key'], len(rows))
  return _ScannedPass(**jax.tree.map(lambda *xs: jnp.stack(xs), *rows), dropout_key=keys)


def _sequential_value_and_grad(
  params: Params,
  batch: Mapping[str, jax.Array],
  draws: Mapping[str, jax.Array],
  *,
  step: int | jax.Array | None,
  model: nn.Module,
  options: ObjectiveOptions,
  terms: TermSet,
  deterministic: bool,
) -> Result:
  """The objective's value and gradient as a `lax.scan` over its passes (see `_scanned_passes`),
  whose body takes one pass's value_and_grad and adds it to the gradient in the carry.

  Every pass runs the same program: T2L and L2T passes differ only in their inputs, in which
  term is weighted by 0 and in whether the text heads run (a run-time switch, so the T2L passes
  never pay the vocabulary projection). A scan iteration ends before the next starts, so the
  backward pass holds one pass's activations at a time.
  """
  view = terms_lib.batch_view(batch, options)
  weights = cycle_vae.term_weights(options, step, terms)

  def pass_loss(p, this: _ScannedPass, tokens_BxS, latents_BxD):
    [(logits_BxSxV, latent_pred_BxD)] = run_passes(
      model,
      p,
      [ModelPass(tokens_BxS, latents_BxD, this.text_t_B, this.latent_t_B, view.mask_BxS, view.segments)],
      deterministic=deterministic,
      dropout_key=None if deterministic else this.dropout_key,
      text_heads_on=this.is_l2t,
    )
    latent_term = terms_lib.latent_term(latent_pred_BxD, this.target_BxD, view.latent_valid_B)
    # Under the same switch as the text heads: a T2L pass's zero logits would otherwise cost the
    # cross-entropy's reductions over [B,S,V] at run time, and XLA would constant-fold them at
    # compile time, which makes a large model's compile much slower.
    text_term = jax.lax.cond(
      this.is_l2t,
      lambda: terms_lib.text_term(logits_BxSxV, view.input_ids_BxS, view.text_valid_BxS),
      lambda: jnp.zeros((), jnp.float32),
    )
    loss = this.latent_weight * latent_term + this.text_weight * text_term
    term = jnp.where(this.is_l2t, text_term, latent_term)
    return loss, (term, jax.lax.stop_gradient((logits_BxSxV, latent_pred_BxD)))

  def body(carry, this: _ScannedPass):
    grads, pseudo_tokens_BxS, x0_BxD = carry
    # A cycle pass reads round 1: cycle latent (T2L) its pseudo tokens, cycle text (L2T) its x0 estimate.
    tokens_BxS = jnp.where(~this.is_base & ~this.is_l2t, pseudo_tokens_BxS, this.tokens_BxS)
    latents_BxD = jnp.where(~this.is_base & this.is_l2t, x0_BxD, this.latents_BxD)
    (loss, (term, (logits_BxSxV, latent_pred_BxD))), pass_grads = jax.value_and_grad(pass_loss, has_aux=True)(
      params, this, tokens_BxS, latents_BxD
    )
    pass_x0_BxD = diffusion.predict_x0(
      options.schedule, latents_BxD, this.latent_t_B, latent_pred_BxD, options.parameterization
    )
    if terms.cycle_latent:
      pseudo_tokens_BxS = jax.lax.cond(
        this.is_base & this.is_l2t,
        lambda: terms_lib.sample_pseudo_tokens(logits_BxSxV, options.cycle_latent_sampling, draws['sample_key']),
        lambda: pseudo_tokens_BxS,
      )
    x0_BxD = jnp.where(this.is_base & ~this.is_l2t, pass_x0_BxD, x0_BxD)
    carry = (jax.tree.map(jnp.add, grads, pass_grads), pseudo_tokens_BxS, x0_BxD)
    norms = [terms_lib.mean_l2_norm(x, view.latent_valid_B) for x in (latent_pred_BxD, pass_x0_BxD)]
    return carry, (loss, term, *norms)

  passes = _scanned_passes(view, draws, weights, options, terms, deterministic)
  init = (jax.tree.map(jnp.zeros_like, params), view.input_ids_BxS, view.latents_BxD)
  (grads, _, _), (pass_losses, pass_terms, pred_norms, x0_norms) = jax.lax.scan(body, init, passes)
  order = in_order(pass_plan(options, terms))
  values = {planned.value: pass_terms[i] for i, planned in enumerate(order)}
  base_t2l = [planned.term for planned in order].index('base_t2l')
  if options.length_head:
    # Reads no pass: the clean latents through the length head, its gradient added to the passes'.
    length_fn = lambda p: terms_lib.length_term(p, view, model=model)
    values['length_loss'], length_grads = jax.value_and_grad(length_fn)(params)
    grads = jax.tree.map(lambda g, lg: g + weights['length_loss'] * lg, grads, length_grads)
  diagnostics = dict(
    t_lat_mean=terms_lib.masked_mean(passes.latent_t_B[base_t2l], view.latent_valid_B),
    latent_pred_norm=pred_norms[base_t2l],
    x0_pred_norm=x0_norms[base_t2l],
  )
  loss = jnp.sum(pass_losses) + (weights['length_loss'] * values['length_loss'] if options.length_head else 0.0)
  return (loss, cycle_vae.metrics(loss, values, diagnostics, weights)), grads
