"""The cycle_vae training step and loop.

`train_step(state, batch, rng)` is pure: randomness is `fold_in(rng, state.step)`, the loss takes
its draws as arguments, and a step whose loss or gradient is not finite applies no update
(parameters and optimizer state unchanged) and is counted. `run(config, workdir)` drives it:
sharded state creation, resume from the workdir, logging one step late, evaluation, checkpoints.
"""

import functools
import math
import sys
import time
from typing import Any

from absl import logging
import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from lgdlm_jax import checkpoint
from lgdlm_jax import converted
from lgdlm_jax import data as data_lib
from lgdlm_jax import evaluation
from lgdlm_jax import losses
from lgdlm_jax import metrics_log
from lgdlm_jax import model as model_lib
from lgdlm_jax import optimizer as optimizer_lib
from lgdlm_jax import preemption
from lgdlm_jax import sharding

EVAL_SEED_OFFSET = 1_000_003


class NonFiniteError(RuntimeError):
  """Raised when training.max_consecutive_nonfinite steps in a row had a non-finite loss or gradient."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_steps: jax.Array  # total number of skipped steps
  consecutive_nonfinite: jax.Array


def init_state(config: ml_collections.ConfigDict, model: model_lib.MultimodalMMDiT,
               optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  cfg = config.model
  tokens = jnp.zeros((1, cfg.max_seq_len), jnp.int32)
  latents = jnp.zeros((1, cfg.latent_dim), jnp.float32)
  params = model.init(rng, tokens, latents)['params']
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=optimizer.init(params), nonfinite_steps=zero,
                    consecutive_nonfinite=zero)


def abstract_state_and_shardings(config, model, optimizer, mesh, rng) -> tuple[TrainState, Any]:
  """The state's shapes and dtypes (nothing allocated) and the shardings it is laid out with."""
  abstract = jax.eval_shape(functools.partial(init_state, config, model, optimizer), rng)
  return abstract, sharding.tree_shardings(abstract, mesh, int(config.mesh.get('min_shard_size', 2**14)))


def create_sharded_state(config, model, optimizer, mesh, rng) -> tuple[TrainState, Any]:
  """Creates the state directly in its shardings (no full copy on one device first)."""
  _, shardings = abstract_state_and_shardings(config, model, optimizer, mesh, rng)
  state = jax.jit(functools.partial(init_state, config, model, optimizer), out_shardings=shardings)(rng)
  return state, shardings


def load_initial_params(config: ml_collections.ConfigDict, shardings: Any) -> Any:
  """Params of a converted checkpoint (convert_torch_weights.py), checked against config.model,
  as float32 (training keeps float32 master weights) on the state's shardings."""
  params = converted.load_params(config.init_from, config.model)
  return jax.device_put(jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params), shardings)


def _debug_check_finite(named: dict[str, Any]) -> None:
  for name, value in named.items():
    chex.assert_tree_all_finite(value, custom_message=f'non-finite {name}')


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               model: model_lib.MultimodalMMDiT, config: ml_collections.ConfigDict,
               optimizer: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """One micro-batch: loss, gradient, and (if all finite) one optimizer update."""
  check = bool(config.debug.get('check_finite', False))
  if check:
    _debug_check_finite({'batch.latent': batch['latent']})
  key = jax.random.fold_in(rng, state.step)
  batch_size = batch['input_ids'].shape[0]
  draws = losses.sample_draws(key, batch_size, config.model.latent_dim, config)
  loss_fn = functools.partial(losses.cycle_vae_loss, step=state.step, model=model, config=config)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, draws)
  grad_norm = optax.global_norm(grads)
  if check:
    _debug_check_finite({**{f'metrics.{k}': v for k, v in metrics.items()}, 'gradients': grads})
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep_if_bad = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  bad = (~finite).astype(jnp.int32)
  new_state = TrainState(
      step=state.step + 1,
      params=keep_if_bad(new_params, state.params),
      opt_state=keep_if_bad(new_opt_state, state.opt_state),
      nonfinite_steps=state.nonfinite_steps + bad,
      consecutive_nonfinite=(state.consecutive_nonfinite + bad) * bad,
  )
  metrics = dict(metrics, grad_norm=grad_norm, step_was_finite=finite,
                 nonfinite_steps=new_state.nonfinite_steps,
                 consecutive_nonfinite=new_state.consecutive_nonfinite)
  return new_state, metrics


def eval_step(params: Any, batch: dict[str, jax.Array], rng: jax.Array, *, model, config) -> dict[str, jax.Array]:
  """Validation metrics with fixed draws (the same at every evaluation), no dropout, full cycle weights."""
  draws = losses.sample_draws(rng, batch['input_ids'].shape[0], config.model.latent_dim, config)
  _, metrics = losses.cycle_vae_loss(params, batch, draws, step=None, model=model, config=config,
                                     deterministic=True)
  return metrics


def compile_steps(config, model, optimizer, mesh, state_shardings):
  """Jitted train step, validation-loss step and sampler evaluation, with explicit shardings; the
  train state is donated."""
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  step_fn = jax.jit(
      functools.partial(train_step, model=model, config=config, optimizer=optimizer),
      in_shardings=(state_shardings, batch_sharding, replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
  )
  if config.debug.get('check_finite', False):
    step_fn = chex.chexify(step_fn, async_check=False)
  eval_in_shardings = (state_shardings.params, batch_sharding, replicated)
  eval_fn = jax.jit(functools.partial(eval_step, model=model, config=config),
                    in_shardings=eval_in_shardings, out_shardings=replicated)
  sample_eval_fn = jax.jit(functools.partial(evaluation.evaluate_batch, model=model, config=config),
                           in_shardings=eval_in_shardings, out_shardings=replicated)
  return step_fn, eval_fn, sample_eval_fn


def _evaluate(eval_fns, params, val_batches, mesh, rng, max_batches: int, sample_batches: int) -> dict[str, float]:
  """Validation losses over max_batches batches, plus the sampler metrics (accuracies, cosines) of
  the first sample_batches of them; each metric is averaged over the batches that computed it."""
  eval_fn, sample_eval_fn = eval_fns
  totals: dict[str, float] = {}
  counts: dict[str, int] = {}
  for i, local in enumerate(val_batches(max_batches)):
    batch = sharding.global_batch(local, mesh)
    metrics = eval_fn(params, batch, rng)
    if i < sample_batches:
      metrics = {**metrics, **sample_eval_fn(params, batch, rng)}
    for k, v in jax.device_get(metrics).items():
      totals[k] = totals.get(k, 0.0) + float(v)
      counts[k] = counts.get(k, 0) + 1
  return {k: v / counts[k] for k, v in totals.items()}


def _print_decoded_examples(state, val_batches, rng, *, model, config) -> None:
  """Decoded validation sentences at the end of a run (single process: the rows are host-local)."""
  num_examples = int(config.training.get('print_examples', 0))
  if val_batches is None or not num_examples or jax.process_count() > 1:
    return
  lines = evaluation.decoded_examples(state.params, next(iter(val_batches(1))), rng, model=model, config=config,
                                      num_examples=num_examples)
  print('\n'.join(lines), flush=True)


def run(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains config.training.num_train_steps micro-batch steps, resuming from workdir if it has a checkpoint."""
  model = model_lib.MultimodalMMDiT(config.model)
  model_lib.validate_model_config(config.model)
  optimizer = optimizer_lib.make_optimizer(config)
  lr_schedule = optimizer_lib.learning_rate_schedule(config)
  mesh = sharding.make_mesh(config)
  seed_key = jax.random.key(config.training.seed)
  init_key, step_key, eval_key = jax.random.split(seed_key, 3)
  train_iter, val_batches = data_lib.make_datasets(config)
  state, state_shardings = create_sharded_state(config, model, optimizer, mesh, init_key)
  min_shard = int(config.mesh.get('min_shard_size', 2**14))
  logging.info('Per device: parameters %.3f GiB, optimizer state %.3f GiB (mesh %s)',
               sharding.per_device_bytes(state.params, mesh.shape['fsdp'], min_shard) / 2**30,
               sharding.per_device_bytes(state.opt_state, mesh.shape['fsdp'], min_shard) / 2**30, dict(mesh.shape))
  manager = checkpoint.make_manager(workdir, config)
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_with_shardings(state, state_shardings))
  if restored is not None:
    state, data_state = restored
    train_iter.set_state(data_state)
    logging.info('Resumed from step %d in %s', int(state.step), workdir)
  elif config.get('init_from'):
    state = state.replace(params=load_initial_params(config, state_shardings.params))
    logging.info('Initialised the parameters from %s', config.init_from)
  step_fn, eval_fn, sample_eval_fn = compile_steps(config, model, optimizer, mesh, state_shardings)

  tcfg = config.training
  num_steps = int(tcfg.num_train_steps)
  save_every, eval_every, log_every = int(tcfg.save_every), int(tcfg.eval_every), int(tcfg.get('log_every', 1))
  max_bad = int(tcfg.max_consecutive_nonfinite)
  tokens_per_step = int(tcfg.train_batch_size) * int(config.model.max_seq_len)
  log = metrics_log.MetricsLog(workdir, config)
  start = int(state.step)
  progress = tqdm.tqdm(total=num_steps, initial=start, disable=not sys.stderr.isatty() or jax.process_index() != 0)
  pending = None  # (step, metrics on device, start time): fetched one step late, so dispatch never waits
  watch = preemption.PreemptionWatch()

  def report(step: int, device_metrics, started: float) -> None:
    metrics = jax.device_get(device_metrics)
    elapsed = time.perf_counter() - started
    if int(metrics['consecutive_nonfinite']) > 0:
      logging.warning('step %d: non-finite loss or gradient (loss=%s, grad_norm=%s); update skipped',
                      step, metrics['loss'], metrics['grad_norm'])
    if step % log_every == 0 or step == num_steps:
      record = {k: float(v) for k, v in metrics.items()}
      record.update(lr=float(lr_schedule(step - 1)), step_time=elapsed, tokens_per_sec=tokens_per_step / elapsed,
                    data_skipped_samples=train_iter.num_skipped)
      log.write(step, record)
      progress.set_postfix(loss=f'{record["loss"]:.4f}')
    if int(metrics['consecutive_nonfinite']) >= max_bad:
      raise NonFiniteError(
          f'{max_bad} consecutive steps (up to step {step}) had a non-finite loss or gradient; stopping. '
          f'The newest checkpoint in {workdir} holds the last good parameters.')

  def evaluate(step: int) -> None:
    val = _evaluate((eval_fn, sample_eval_fn), state.params, val_batches, mesh, eval_key,
                    int(tcfg.get('eval_batches', 8)), int(tcfg.get('eval_sample_batches', 1)))
    log.write(step, val, prefix='val_')

  try:
    if eval_every and val_batches is not None and start == 0:
      evaluate(0)  # the starting point of every validation curve
    for step in range(start, num_steps):
      started = time.perf_counter()
      batch = sharding.global_batch(next(train_iter), mesh)
      state, metrics = step_fn(state, batch, step_key)
      if pending is not None:
        report(*pending)
      pending = (step + 1, metrics, started)
      progress.update(1)
      done = step + 1
      if eval_every and val_batches is not None and done % eval_every == 0:
        report(*pending)
        pending = None
        evaluate(done)
      preempted = watch.reached(done)
      if (save_every and done % save_every == 0) or done == num_steps or preempted:
        if pending is not None:
          report(*pending)  # never checkpoint past a step that should have stopped the run
          pending = None
        checkpoint.save(manager, done, state, train_iter.get_state())
      if preempted:
        logging.warning('Preempted: saved step %d in %s; rerun the same command to resume.', done, workdir)
        break
    if pending is not None:
      report(*pending)
    if int(state.step) == num_steps:
      _print_decoded_examples(state, val_batches, eval_key, model=model, config=config)
  finally:
    watch.close()
    manager.wait_until_finished()
    manager.close()
    log.close()
    progress.close()
    train_iter.close()
  return state
