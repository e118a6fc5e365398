"""The train step's side of latentDLM's pretraining modes (loss.loss_type other than cycle_vae).

    schedule = schedule_from_config(config)       # the mode of each step, on the host
    (loss, metrics), grads, frozen = value_and_grad(params, batch, key, mode=mode, model=model, options=options)

The loss is lgdlm_jax.objective.latentdlm's; the gradient of the units the mode freezes
(lgdlm_jax.training.freezing) is zeroed, and `frozen` goes to the optimizer, which leaves them alone.
"""

from collections.abc import Mapping
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lgdlm_jax.objective import latentdlm
from lgdlm_jax.objective import mode_schedule
from lgdlm_jax.objective.options import ObjectiveOptions
from lgdlm_jax.training import freezing


def is_latentdlm(config: ml_collections.ConfigDict) -> bool:
  return config.loss.loss_type != 'cycle_vae'


def schedule_from_config(config: ml_collections.ConfigDict) -> mode_schedule.ModeSchedule:
  training = config.training
  return mode_schedule.ModeSchedule(
    loss_type=config.loss.loss_type,
    sequential=tuple((mode, int(steps)) for mode, steps in training.sequential_schedule),
    weights=tuple(float(w) for w in training.mode_weights),
    seed=training.seed,
  )


def draws_for(key: jax.Array, batch: Mapping[str, jax.Array], latent_dim: int) -> dict[str, jax.Array]:
  batch_size, seq_len = batch['input_ids'].shape
  return latentdlm.sample_draws(key, batch_size, seq_len, latent_dim)


def value_and_grad(
  params: Any,
  batch: Mapping[str, jax.Array],
  key: jax.Array,
  *,
  mode: str,
  model: nn.Module,
  options: ObjectiveOptions,
  latent_dim: int,
) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Any, Any]:
  """((loss, metrics), the gradient with the frozen units zeroed, the frozen units) of one batch in `mode`."""
  loss_fn = functools.partial(latentdlm.latentdlm_loss, mode=mode, model=model, options=options)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, draws_for(key, batch, latent_dim))
  frozen = freezing.frozen_units(params, mode)
  return (loss, metrics), freezing.zero_frozen(grads, frozen), frozen


def eval_step(
  params: Any,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  *,
  model: nn.Module,
  options: ObjectiveOptions,
  latent_dim: int,
  modes: tuple[mode_schedule.Mode, ...],
) -> dict[str, jax.Array]:
  """Validation metrics with fixed draws and no dropout: each mode the run trains, its metrics prefixed
  with its name when there are several, and `loss` the mean of their losses."""
  draws = draws_for(rng, batch, latent_dim)
  metrics: dict[str, jax.Array] = {}
  losses = []
  for mode in modes:
    loss, named = latentdlm.latentdlm_loss(
      params, batch, draws, mode=mode.name, model=model, options=options, deterministic=True
    )
    losses.append(loss)
    named.pop('mode')
    metrics.update(named if len(modes) == 1 else {f'{mode.name}_{k}': v for k, v in named.items()})
  metrics['loss'] = jnp.mean(jnp.stack(losses))
  return metrics
