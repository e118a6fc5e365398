"""Orbax checkpoints in the workdir: the train state and every process's data-iterator state, saved together.

Saves are asynchronous (training continues while the arrays are written) and are restored onto the
same shardings the state was created with. Which ones are kept is one Orbax preservation policy:
the newest `training.keep_checkpoints`, and, with `training.keep_best_checkpoints` N > 0, also the
N best by `training.best_checkpoint_metric` among the checkpoints saved at an evaluation (which
store every validation metric of that step).

Layout of one checkpoint, WORKDIR/checkpoints/<step>/, by version:
  1  `state` (the TrainState) and `data` (the old iterator's JSON position); written before versions
     were recorded, so a checkpoint without `meta` is version 1. Still resumed: its data continue
     from the position the step implies.
  2  adds `meta` (JSON: {"layout_version": 2}); `data` is grain's own checkpoint of the iterator,
     one `process_I-of-N.json` per process, and may be absent.
A checkpoint without the data file of this process (none saved, e.g. converted from PyTorch, or
saved by another number of processes) restores the state, and the pipeline starts at the global
batch the restored step implies (lgdlm_jax.data.order_position).

A newest step that cannot be restored (a file truncated or missing) is skipped for the newest
intact one and set aside (lgdlm_jax.checkpoints.damaged); a save that cannot be written stops the
run with errors.StorageError (`save`).
"""

from collections.abc import Callable
import json
import math
import os
import re
from typing import Any
import weakref

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from lgdlm_jax import data as data_lib
from lgdlm_jax import errors
from lgdlm_jax.checkpoints import damaged

CHECKPOINTS_DIR = 'checkpoints'  # under the workdir: one folder per saved step
STATE_ITEM = 'state'  # the TrainState; 'data' holds the iterator states, 'meta' the layout version
DATA_ITEM = 'data'
META_ITEM = 'meta'
LAYOUT_VERSION = 2
# The step each manager last started to save: Orbax forgets a step whose save failed, and its error
# may come later (at the next save, the wait or the close).
_IN_FLIGHT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Metric-name endings for which higher is better; every other ranking metric is a loss.
HIGHER_IS_BETTER = ('_acc', '_cosine')


def higher_is_better(metric: str) -> bool:
  return metric.endswith(HIGHER_IS_BETTER)


def keeps_best(config: ml_collections.ConfigDict) -> bool:
  return config.training.keep_best_checkpoints > 0


def _policy(config: ml_collections.ConfigDict) -> preservation_policy.PreservationPolicy:
  latest = preservation_policy.LatestN(n=config.training.keep_checkpoints)
  if not keeps_best(config):
    return latest
  metric = config.training.best_checkpoint_metric
  best = preservation_policy.BestN(
    get_metric_fn=lambda metrics: metrics[metric],
    reverse=not higher_is_better(metric),
    n=config.training.keep_best_checkpoints,
    keep_checkpoints_without_metrics=False,
  )  # those are the newest ones' business
  return preservation_policy.AnyPreservationPolicy(policies=[latest, best])


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  metric = config.training.best_checkpoint_metric
  # best_fn alone makes Orbax write each checkpoint's metrics to disk (the policy keeps them in memory
  # only), so that a resumed run still ranks the checkpoints saved before it.
  best = dict(best_fn=lambda metrics: metrics[metric], best_mode='max' if higher_is_better(metric) else 'min')
  options = ocp.CheckpointManagerOptions(
    preservation_policy=_policy(config),
    enable_async_checkpointing=True,
    create=True,
    **(best if keeps_best(config) else {}),
  )
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR),
    options=options,
    item_names=(STATE_ITEM, DATA_ITEM, META_ITEM),
  )


def ranking_metrics(val_metrics: dict[str, float] | None, config: ml_collections.ConfigDict) -> dict[str, float] | None:
  """The metrics to store with a checkpoint for best-N ranking: the validation metrics of that step
  when best checkpoints are kept and the ranking metric is finite; None otherwise (such a
  checkpoint is kept only while it is among the newest)."""
  if val_metrics is None or not keeps_best(config):
    return None
  value = val_metrics.get(config.training.best_checkpoint_metric)
  if value is None or not math.isfinite(value):
    return None
  return dict(val_metrics)


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: Any,
  data_iterator: data_lib.TrainIterator | None = None,
  metrics: dict[str, float] | None = None,
) -> None:
  """Starts an asynchronous save of `state` at `step` (with `metrics` from `ranking_metrics`, for the
  best-N policy); the iterator state (if any) is written before it returns.

  A save that cannot be written (the disk full, the workdir read-only) raises errors.StorageError
  naming its step and folder, here or at the next `save` or `finish`: Orbax writes a step under a
  temporary name and renames it only once whole, so such a step is never taken for a checkpoint and
  the ones before it stay intact.
  """
  finish(manager)  # the previous save's failure, named as its own
  items = {STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave({'layout_version': LAYOUT_VERSION})}
  if data_iterator is not None:
    items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
  _IN_FLIGHT[manager] = step
  try:
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)
  except (OSError, ValueError) as e:
    if (error := _storage_error(manager, step, e)) is None:
      raise
    raise error from e


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits until the save in flight (if any) is written; a failure is an errors.StorageError."""
  _named(manager, manager.wait_until_finished)


def close(manager: ocp.CheckpointManager) -> None:
  """Closes the manager; the save in flight fails as in `finish` (Orbax writes its last metadata here)."""
  _named(manager, manager.close)


def _named(manager: ocp.CheckpointManager, wait: Callable[[], None]) -> None:
  try:
    wait()
  except (OSError, ValueError) as e:
    if (error := _storage_error(manager, _IN_FLIGHT.get(manager), e)) is None:
      raise
    raise error from e


def _storage_error(manager: ocp.CheckpointManager, step: int | None, error: Exception) -> errors.StorageError | None:
  """The StorageError for a save that failed for want of space or permission; None for anything else (a bug)."""
  if isinstance(error, OSError):
    reason = error.strerror or str(error)
  elif match := re.search(r': ([^:\[]+?) \[os_error_code=', str(error)):  # tensorstore reports OS errors so
    reason = match.group(1)
  else:
    return None
  return errors.StorageError(
    f'could not write the checkpoint of step {step} to '
    f'{os.path.join(str(manager.directory), str(step))}: {reason}; the checkpoints '
    'saved before it are intact: rerun the same command to resume once it can be written'
  )


def layout_version(manager: ocp.CheckpointManager, step: int) -> int:
  if not os.path.exists(os.path.join(str(manager.directory), str(step), META_ITEM)):
    return 1
  return int(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta['layout_version'])


def restore_latest(
  manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: data_lib.TrainIterator | None = None
) -> Any | None:
  """The state of the newest intact checkpoint, onto abstract_state's shardings (None if none);
  positions data_iterator.

  A step that cannot be restored on every process is skipped (one warning naming the file) for the
  next older one; once one restores, the newer steps are set aside (lgdlm_jax.checkpoints.damaged).
  If none restores, an InputError lists them all and nothing is moved: a failure that every step
  shares (a state that no longer fits them) is no damage.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  skipped: list[tuple[int, str]] = []
  for step in steps:
    step_dir = os.path.join(str(manager.directory), str(step))
    why = damaged.unreadable_file(step_dir)
    if _on_every_process(why is None):  # the restore is collective: all enter it, or none
      try:
        restored = _restore_step(manager, step, abstract_state, data_iterator)
      except (OSError, ValueError) as e:  # JSON, tensorstore and missing-file errors; InputError is raised
        if isinstance(e, errors.InputError):
          raise
        why = damaged.diagnose(step_dir, e)
      if _on_every_process(why is None):
        newer = [s for s in steps if s > step]
        if newer:
          damaged.set_aside(str(manager.directory), newer)
          manager.reload()
          logging.warning(
            'Resuming from step %d, the newest intact checkpoint; skipped %s',
            step,
            ', '.join(str(s) for s in sorted(newer)),
          )
        return restored
    why = why or 'another process cannot restore it'
    logging.warning('Skipping the checkpoint of step %d: %s', step, why)
    skipped.append((step, why))
  if skipped:
    raise errors.InputError(
      f'no checkpoint in {manager.directory} can be restored: ' + '; '.join(f'step {s}: {why}' for s, why in skipped)
    )
  return None


def _on_every_process(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _restore_step(
  manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iterator: data_lib.TrainIterator | None
) -> Any:
  version = layout_version(manager, step)
  if version > LAYOUT_VERSION:
    raise errors.InputError(
      f'the checkpoint at step {step} has layout version {version}; this lgdlm_jax reads up to {LAYOUT_VERSION}'
    )
  items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
  data_dir = os.path.join(manager.directory, str(step), DATA_ITEM)  # the default step folder name: the step
  own_file = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
  has_own = os.path.isfile(os.path.join(data_dir, own_file))
  if data_iterator is not None and has_own:
    items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if data_iterator is not None and not has_own:
    others = sorted(f for f in os.listdir(data_dir) if f.startswith('process_')) if os.path.isdir(data_dir) else []
    other_state = None
    if others:
      with open(os.path.join(data_dir, others[0])) as f:
        other_state = json.load(f)
    logging.warning(
      'The checkpoint of step %d has %s; reading from the global batch of step %d on',
      step,
      f'data-iterator states of another process count ({others[0]}; this run: {own_file})'
      if others
      else 'no data-iterator state',
      step,
    )
    data_iterator.start_at_step(step, other_state)
  return restored[STATE_ITEM]


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
