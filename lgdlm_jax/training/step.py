"""The cycle_vae train state and its compiled steps.

`train_step(state, batch, rng, terms=...)` is pure: randomness is `fold_in(rng, state.step)`, the
loss takes its draws as arguments (and its options, built once when the step is made), and a step
whose loss or gradient is not finite applies no update (parameters, EMA and optimizer state
unchanged) and is counted. The cycle terms it computes (`terms`) are static: `TrainPrograms` holds
one compiled program per term set and the loop (lgdlm_jax.training.loop.run) picks one on the host
from the step number.
"""

import functools
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lgdlm_jax import model as model_lib
from lgdlm_jax.evaluation import metrics as eval_metrics
from lgdlm_jax.objective import cycle_schedule
from lgdlm_jax.objective import cycle_vae
from lgdlm_jax.objective import draws as draws_lib
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.training import ema as ema_lib
from lgdlm_jax.training import gradients
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_steps: jax.Array  # total number of skipped steps
  consecutive_nonfinite: jax.Array
  ema_params: Any = None  # the parameters' moving average (lgdlm_jax.training.ema); None when training.ema_decay = 0


def init_state(
  config: ml_collections.ConfigDict,
  model: model_lib.MultimodalMMDiT,
  optimizer: optax.GradientTransformation,
  rng: jax.Array,
) -> TrainState:
  cfg = config.model
  tokens = jnp.zeros((1, cfg.max_seq_len), jnp.int32)
  latents = jnp.zeros((1, cfg.latent_dim), jnp.float32)
  params = model.init(rng, tokens, latents)['params']
  zero = jnp.zeros((), jnp.int32)
  return TrainState(
    step=zero,
    params=params,
    opt_state=optimizer.init(params),
    nonfinite_steps=zero,
    consecutive_nonfinite=zero,
    ema_params=ema_lib.initial(params, config),
  )


def abstract_state_and_shardings(config, model, optimizer, mesh, rng) -> tuple[TrainState, Any]:
  """The state's shapes and dtypes (nothing allocated) and the shardings it is laid out with."""
  abstract = jax.eval_shape(functools.partial(init_state, config, model, optimizer), rng)
  return abstract, sharding.tree_shardings(abstract, mesh, config.mesh.min_shard_size)


def create_sharded_state(config, model, optimizer, mesh, rng) -> tuple[TrainState, Any]:
  """Creates the state directly in its shardings (no full copy on one device first)."""
  _, shardings = abstract_state_and_shardings(config, model, optimizer, mesh, rng)
  state = jax.jit(functools.partial(init_state, config, model, optimizer), out_shardings=shardings)(rng)
  return state, shardings


def _debug_check_finite(named: dict[str, Any]) -> None:
  for name, value in named.items():
    chex.assert_tree_all_finite(value, custom_message=f'non-finite {name}')


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  model: model_lib.MultimodalMMDiT,
  config: ml_collections.ConfigDict,
  options: options_lib.ObjectiveOptions,
  optimizer: optax.GradientTransformation,
  terms: cycle_schedule.TermSet,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One micro-batch: the loss with the cycle terms `terms`, its gradient, and (if all finite) one
  optimizer update and EMA update."""
  check = config.debug.check_finite
  if check:
    _debug_check_finite({'batch.latent': batch['latent']})
  key = jax.random.fold_in(rng, state.step)
  draws = draws_lib.draws_for_batch(key, batch, config.model.latent_dim, options)
  (loss, metrics), grads = gradients.value_and_grad(
    state.params,
    batch,
    draws,
    step=state.step,
    model=model,
    options=options,
    terms=terms,
    mode=gradients.round_gradients(config),
  )
  grad_norm = optax.global_norm(grads)
  if check:
    _debug_check_finite({**{f'metrics.{k}': v for k, v in metrics.items()}, 'gradients': grads})
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep_if_bad = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  bad = (~finite).astype(jnp.int32)
  params = keep_if_bad(new_params, state.params)
  applied = finite & ema_lib.update_was_applied(state.opt_state, new_opt_state)
  new_state = TrainState(
    step=state.step + 1,
    params=params,
    opt_state=keep_if_bad(new_opt_state, state.opt_state),
    nonfinite_steps=state.nonfinite_steps + bad,
    consecutive_nonfinite=(state.consecutive_nonfinite + bad) * bad,
    ema_params=ema_lib.update(state.ema_params, params, config.training.ema_decay, applied),
  )
  # The learning rate of this micro-batch, as the reference logs it; returned so that the loop never
  # evaluates the schedule on the device itself (which would wait for the step in flight).
  lr = optimizer_lib.learning_rate_schedule(config)(state.step)
  metrics = dict(
    metrics,
    grad_norm=grad_norm,
    step_was_finite=finite,
    lr=lr,
    nonfinite_steps=new_state.nonfinite_steps,
    consecutive_nonfinite=new_state.consecutive_nonfinite,
  )
  return new_state, metrics


def eval_step(
  params: Any,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  model: model_lib.MultimodalMMDiT,
  options: options_lib.ObjectiveOptions,
  latent_dim: int,
) -> dict[str, jax.Array]:
  """Validation metrics with fixed draws (the same at every evaluation), no dropout: every term,
  at the base weights, so that runs with different cycle settings report the same terms."""
  draws = draws_lib.draws_for_batch(rng, batch, latent_dim, options)
  _, metrics = cycle_vae.cycle_vae_loss(
    params, batch, draws, step=None, model=model, options=options, terms=cycle_schedule.ALL_TERMS, deterministic=True
  )
  return metrics


def _traced_under(mesh, fn):
  """fn, traced with `mesh` as the ambient mesh: layers that must know it (the splash attention's
  shard_map) read it there instead of having it passed through every module."""

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced


class TrainPrograms:
  """The jitted train step, one program per cycle term set, each made on first use.

      programs = TrainPrograms(config, model, optimizer, mesh, state_shardings)
      step_fn = programs.for_terms(programs.schedule.terms_at(step))   # host int step -> jitted step
      state, metrics = step_fn(state, batch, rng)

  Every program has the same shardings, donates the state and is traced under `mesh` as the
  ambient mesh; programs.made lists the term sets used so far (each is one compile, or one
  compilation-cache hit).
  """

  def __init__(self, config, model, optimizer, mesh, state_shardings):
    self._config, self._model, self._optimizer, self._mesh = config, model, optimizer, mesh
    self.options = options_lib.from_config(config)
    self._shardings = (state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh))
    self._outputs = (state_shardings, sharding.replicated(mesh))
    self.schedule = self.options.cycle
    self._programs: dict[cycle_schedule.TermSet, Any] = {}

  def for_terms(self, terms: cycle_schedule.TermSet):
    if terms not in self._programs:
      step_fn = jax.jit(
        _traced_under(
          self._mesh,
          functools.partial(
            train_step,
            model=self._model,
            config=self._config,
            options=self.options,
            optimizer=self._optimizer,
            terms=terms,
          ),
        ),
        in_shardings=self._shardings,
        out_shardings=self._outputs,
        donate_argnums=(0,),
      )
      if self._config.debug.check_finite:
        step_fn = chex.chexify(step_fn, async_check=False)
      self._programs[terms] = step_fn
    return self._programs[terms]

  @property
  def made(self) -> tuple[cycle_schedule.TermSet, ...]:
    return tuple(self._programs)


def compile_steps(config, model, optimizer, mesh, state_shardings):
  """The train-step programs (TrainPrograms), and the jitted validation-loss step and sampler
  evaluation, with explicit shardings, traced under `mesh` as the ambient mesh; the train state is
  donated."""
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  eval_in_shardings = (state_shardings.params, batch_sharding, replicated)
  programs = TrainPrograms(config, model, optimizer, mesh, state_shardings)
  eval_fn = jax.jit(
    _traced_under(
      mesh, functools.partial(eval_step, model=model, options=programs.options, latent_dim=config.model.latent_dim)
    ),
    in_shardings=eval_in_shardings,
    out_shardings=replicated,
  )
  sample_eval_fn = jax.jit(
    _traced_under(mesh, functools.partial(eval_metrics.evaluate_batch, model=model, config=config)),
    in_shardings=eval_in_shardings,
    out_shardings=replicated,
  )
  return programs, eval_fn, sample_eval_fn
