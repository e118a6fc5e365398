"""The training loop: `run(config, workdir)`.

Sharded state creation, resume from the workdir (its config compared first), one train-step
program per cycle term set picked on the host, logging one step late (dispatch never waits),
evaluation (with the EMA parameters when on) and a plot of the log at each evaluation, checkpoints
(newest and best), profiling, preemption; where the wall time went (lgdlm_jax.training.timing)
in each log record and at the end.
"""

from collections.abc import Callable
import contextlib
import os
import sys
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import tqdm

from lgdlm_jax import console
from lgdlm_jax import data as data_lib
from lgdlm_jax.checkpoints import init_from
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.checkpoints import resume_check as resume
from lgdlm_jax.data import text_dataset
from lgdlm_jax.evaluation import examples as eval_examples
from lgdlm_jax.evaluation import suite as eval_suite
from lgdlm_jax.training import compile_cache
from lgdlm_jax.training import ema as ema_lib
from lgdlm_jax.training import metrics_log
from lgdlm_jax.training import profiling
from lgdlm_jax.training import runtime
from lgdlm_jax.training import setup as training_setup
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step as train
from lgdlm_jax.training import throughput
from lgdlm_jax.training import timed_saves
from lgdlm_jax.training import timing
from lgdlm_jax.training import tracking


class NonFiniteError(RuntimeError):
  """Raised when training.max_consecutive_nonfinite steps in a row had a non-finite loss or gradient."""


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


def _print_decoded_examples(state, val_batches, train_iter, rng, *, model, config) -> None:
  """Decoded validation sentences, then training sentences, at the end of a run (single process:
  the rows are host-local). The training rows are the next batch of the (already saved) iterator."""
  num_examples = config.training.print_examples
  if not num_examples or jax.process_count() > 1:
    return
  params = ema_lib.evaluation_params(state, config)
  sources = [('training example', next(train_iter))]
  if val_batches is not None:
    sources.insert(0, ('validation example', next(iter(val_batches(1)))))
  for label, batch in sources:
    lines = eval_examples.decoded_examples(
      params, batch, rng, model=model, config=config, num_examples=num_examples, label=label
    )
    print('\n'.join(lines), flush=True)


def _text_suite(model, config: ml_collections.ConfigDict) -> eval_suite.TextSuite:
  """The evaluation suite for training.eval_text_metrics; says once what it leaves out. With several
  processes, each scores its own rows of the sampler batches."""
  encoder, note = text_dataset.dataset_encoder(config.data)
  suite = eval_suite.TextSuite(model, config, encoder)
  (logging.info if encoder is not None else logging.warning)('training.eval_text_metrics: %s', note)
  for line in suite.notes:
    logging.warning('training.eval_text_metrics: %s', line)
  return suite


def _print_outputs(workdir: str) -> None:
  """Where the run's log and plot are (process 0); the plot exists once an evaluation wrote it."""
  if jax.process_index() != 0:
    return
  plot_path = os.path.join(workdir, metrics_log.PLOT_FILE)
  print(
    f'Training log: {os.path.join(workdir, metrics_log.LOG_FILE)}'
    + (f'; plot: {plot_path}' if os.path.exists(plot_path) else ''),
    flush=True,
  )


def _write_plot(workdir: str) -> None:
  """WORKDIR/training_log.png from the log so far (process 0)."""
  if jax.process_index() != 0:
    return
  from lgdlm_jax.training import log_plot  # pylint: disable=g-import-not-at-top  (matplotlib takes seconds to import)

  log_plot.write_plot([workdir], os.path.join(workdir, metrics_log.PLOT_FILE))


def _report_time(totals: dict[str, float], log: metrics_log.MetricsLog, step: int) -> None:
  """Where the run's wall time went: a record at its last step and a console line (process 0)."""
  log.write(step, totals)
  if jax.process_index() == 0:
    print(timing.summary_line(totals), flush=True)


def _log_programs(programs: train.TrainPrograms, start: int, stop: int) -> None:
  uses = programs.schedule.term_sets_between(start, stop)
  logging.info(
    'Train-step programs for steps %d to %d: %s',
    start,
    stop,
    ', '.join(f'{terms.name} ({count} steps)' for terms, count in uses.items()) or 'none',
  )


def _starting_state(
  setup: training_setup.Setup, manager, train_iter, initial, key: jax.Array, workdir: str
) -> tuple[train.TrainState, Any, bool]:
  """(state, its shardings, whether it was resumed): the workdir's newest checkpoint, else the
  weights of init_from, else a fresh state."""
  config, mesh = setup.config, setup.mesh
  state, state_shardings = setup.create_state(key)
  min_shard = config.mesh.min_shard_size
  logging.info(
    'Per device: parameters %.3f GiB, optimizer state %.3f GiB (mesh %s)',
    sharding.per_device_bytes(state.params, mesh.shape['fsdp'], min_shard) / 2**30,
    sharding.per_device_bytes(state.opt_state, mesh.shape['fsdp'], min_shard) / 2**30,
    dict(mesh.shape),
  )
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_with_shardings(state, state_shardings), train_iter)
  if restored is not None:
    state = ema_lib.after_restore(restored, config)
    logging.info('Resumed from step %d in %s', int(state.step), workdir)
  elif initial is not None:
    state = init_from.apply(initial, state, state_shardings)
    state = state.replace(ema_params=ema_lib.initial(state.params, config))
    train_iter.start_at_step(int(state.step))  # a converted optimizer state continues mid-run
    logging.info('Initialised from %s', init_from.describe(initial))
  return state, state_shardings, restored is not None


class _LateReport:
  """The step metrics, reported one step late so that dispatch never waits for the step in flight.

  `hold` reports the step held before and keeps the new one; `flush` reports the held step now:
  before an evaluation, a checkpoint (never past a step that should have stopped the run) and the end.
  """

  def __init__(self, report: Callable[..., None]):
    self._report = report
    self._pending: tuple | None = None

  def hold(self, *pending) -> None:
    self.flush()
    self._pending = pending

  def flush(self) -> None:
    if self._pending is not None:
      pending, self._pending = self._pending, None
      self._report(*pending)


def run(config: ml_collections.ConfigDict, workdir: str) -> train.TrainState:
  """Trains config.training.num_train_steps micro-batch steps, resuming from workdir if it has a checkpoint.

  `config` is validated and frozen here unless it already is (lgdlm_jax.config.finalize).
  """
  clock = timing.PhaseClock()
  setup = training_setup.build(config)
  config, mesh = setup.config, setup.mesh
  initial = init_from.load(config, workdir)  # every check of init_from, before any work
  tracking.check(config)  # W&B's package, before any work
  compile_cache.use(config, workdir)
  init_key, step_key, eval_key = jax.random.split(jax.random.key(config.training.seed), 3)
  with contextlib.ExitStack() as stack:
    stack.enter_context(clock.compiles())
    manager = checkpoint.make_manager(workdir, config)
    stack.callback(checkpoint.close, manager)
    if manager.latest_step() is not None:
      resume.check_config(config, workdir)  # before any work: a refused change stops here
    train_iter, val_batches = data_lib.make_datasets(config)
    stack.callback(train_iter.close)
    state, state_shardings, resumed = _starting_state(setup, manager, train_iter, initial, init_key, workdir)
    programs, eval_fn, sample_eval_fn = setup.compile(state_shardings)

    tcfg = config.training
    num_steps = int(tcfg.num_train_steps)
    save_every, eval_every, log_every = int(tcfg.save_every), int(tcfg.eval_every), tcfg.log_every
    max_bad = int(tcfg.max_consecutive_nonfinite)
    start = int(state.step)
    log = metrics_log.MetricsLog(workdir, config, resume_step=start if resumed else None)
    stack.callback(log.close)
    _log_programs(programs, start, num_steps)
    profiler = profiling.StepProfiler(config, workdir)
    stack.callback(profiler.close)
    progress = console.Progress(start, num_steps, show=jax.process_index() == 0)  # a bar on a terminal, else lines
    stack.callback(progress.close)
    watch = runtime.PreemptionWatch()
    stack.callback(watch.close)
    timed = timed_saves.TimedSaves(tcfg.save_every_minutes)
    stack.callback(checkpoint.finish, manager)  # first on the way out: every save is whole before anything closes

    def report(step: int, device_metrics, started: float, data_wait: float, tokens: throughput.Tokens) -> None:
      with clock.phase('step'):  # blocks until the step is done
        metrics = jax.device_get(device_metrics)
      elapsed = time.perf_counter() - started
      train_iter.agree_on_bad_samples()  # every process, every step: a stop for bad data is taken by all
      if int(metrics['consecutive_nonfinite']) > 0:
        logging.warning(
          'step %d: non-finite loss or gradient (loss=%s, grad_norm=%s); update skipped',
          step,
          metrics['loss'],
          metrics['grad_norm'],
        )
      if step % log_every == 0 or step == num_steps:
        record = {k: float(v) for k, v in metrics.items()}
        record.update(
          step_time=elapsed,
          **throughput.rates(tokens, elapsed, per='sec'),
          data_wait_time=data_wait,
          data_skipped_samples=train_iter.num_skipped,
        )
        record.update(clock.interval())
        with clock.phase('log'):
          log.write(step, record)
        progress.logged(step, record['loss'], tokens.padding_fraction)
      if int(metrics['consecutive_nonfinite']) >= max_bad:
        raise NonFiniteError(
          f'{max_bad} consecutive steps (up to step {step}) had a non-finite loss or gradient; stopping. '
          f'The newest checkpoint in {workdir} holds the last good parameters.'
        )

    text_suite = _text_suite(setup.model, config) if tcfg.eval_text_metrics and val_batches is not None else None

    def evaluate(step: int) -> dict[str, float]:
      params = ema_lib.evaluation_params(state, config)
      val = _evaluate(
        (eval_fn, sample_eval_fn), params, val_batches, mesh, eval_key, tcfg.eval_batches, tcfg.eval_sample_batches
      )
      if text_suite is not None:  # names the validation already has keep its values
        val = {**text_suite.run(params, val_batches(tcfg.eval_sample_batches), eval_key)[0], **val}
      log.write(step, val, prefix='val_')
      if jax.process_index() == 0:
        tqdm.tqdm.write(eval_examples.eval_line(step, val), file=sys.stdout)  # above the progress bar, never across it
      _write_plot(workdir)
      return {f'val_{k}': v for k, v in val.items()}

    late = _LateReport(report)
    if eval_every and val_batches is not None and start == 0:
      with clock.phase('eval'):
        evaluate(0)  # the starting point of every validation curve
    clock.settle('other')
    for step in range(start, num_steps):
      started = time.perf_counter()
      with clock.phase('data_wait'):
        local_batch = next(train_iter)
        data_wait = time.perf_counter() - started  # the loader's share of the step
        tokens = throughput.count_tokens(local_batch, jax.process_count())  # on the host: the step never waits
        batch = sharding.global_batch(local_batch, mesh)
      terms = programs.schedule.terms_at(step)
      if terms not in programs.made:
        logging.info('Step %d: the first with the terms %s, a train-step program of its own', step, terms.name)
      with profiler.step(step), clock.phase('step'):
        state, metrics = programs.for_terms(terms)(state, batch, step_key)
      profiler.after(step, state)
      late.hold(step + 1, metrics, started, data_wait, tokens)
      progress.update(step + 1, tokens.real)
      done = step + 1
      val = None
      if eval_every and val_batches is not None and done % eval_every == 0:
        late.flush()  # the step's report before the evaluation's
        with clock.phase('eval'):
          val = evaluate(done)
      preempted = watch.reached(done)
      time_due = timed.due()  # every step on every process: with several, a collective
      # With best checkpoints kept, every evaluated step is saved, so that it can be among them.
      best_candidate = val is not None and checkpoint.keeps_best(config)
      if (save_every and done % save_every == 0) or done == num_steps or preempted or best_candidate or time_due:
        late.flush()  # never checkpoint past a step that should have stopped the run
        with clock.phase('checkpoint'):
          checkpoint.save(manager, done, state, train_iter, checkpoint.ranking_metrics(val, config))
        timed.saved()
      if preempted:
        logging.warning('Preempted: saved step %d in %s; rerun the same command to resume.', done, workdir)
        break
    late.flush()
    progress.close()  # the examples below the finished bar
    if int(state.step) == num_steps:
      with clock.phase('eval'):
        _print_decoded_examples(state, val_batches, train_iter, eval_key, model=setup.model, config=config)
    if int(state.step) > start:
      with clock.phase('checkpoint'):
        checkpoint.finish(manager)  # the last save's writes, in the time it took
      _report_time(clock.totals(), log, int(state.step))
    if int(state.step) == num_steps:
      _print_outputs(workdir)
  return state
