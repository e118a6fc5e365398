"""An exponential moving average of the parameters (training.ema_decay; 0 = off), kept in the train state.

After every optimizer update that is applied (under gradient accumulation only the A-th micro-batch
of each group updates; a non-finite step updates nothing):

    ema = decay * ema + (1 - decay) * params

It starts equal to the initial parameters (the random init, or init_from's), lives in float32 on
the parameters' shardings, and is saved in every checkpoint. When it is on, evaluation, the decoded
examples and `python -m lgdlm_jax.sample` use it (`--params raw` picks the raw parameters there).
"""

from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

# What `python -m lgdlm_jax.sample --params` accepts: the moving average or the raw parameters.
PARAMS_CHOICES = ('ema', 'raw')


def enabled(config: ml_collections.ConfigDict) -> bool:
  return config.training.ema_decay > 0.0


def initial(params: Any, config: ml_collections.ConfigDict) -> Any:
  """The EMA a fresh run starts from (a copy of `params`), or None when it is off."""
  return jax.tree_util.tree_map(jnp.copy, params) if enabled(config) else None


def update(ema_params: Any, params: Any, decay: float, applied: jax.Array) -> Any:
  """The EMA after one micro-batch: moved towards `params` where `applied` (a bool scalar), else unchanged."""
  if ema_params is None:
    return None
  moved = optax.incremental_update(params, ema_params, step_size=1.0 - decay)
  return jax.tree_util.tree_map(lambda new, old: jnp.where(applied, new, old), moved, ema_params)


def update_was_applied(old_opt_state: Any, new_opt_state: Any) -> jax.Array | bool:
  """Whether the optimizer changed the parameters in this call: under gradient accumulation
  (optax.MultiSteps) only when its count of applied updates moved; otherwise always."""
  if isinstance(new_opt_state, optax.MultiStepsState):
    return new_opt_state.gradient_step != old_opt_state.gradient_step
  return True


def after_restore(state: Any, config: ml_collections.ConfigDict) -> Any:
  """The restored state, with an EMA started from its parameters when the EMA is on but the
  checkpoint has none (it was switched on with training.allow_config_change)."""
  if enabled(config) and state.ema_params is None:
    logging.warning('The checkpoint has no EMA (training.ema_decay was 0): it starts from the restored parameters')
    return state.replace(ema_params=initial(state.params, config))
  return state


def evaluation_params(state: Any, config: ml_collections.ConfigDict) -> Any:
  """The parameters evaluation and the decoded examples use: the EMA when it is on, else the raw ones."""
  return state.ema_params if enabled(config) else state.params
