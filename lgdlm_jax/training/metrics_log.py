"""Run logs, written by process 0: training_log.jsonl, TensorBoard events, config.json in the workdir,
and W&B where logging.wandb_project is set (lgdlm_jax.training.tracking). Every sink gets the same
records, so a metric has one name everywhere.

A run that resumes from the checkpoint of step S first cuts the log back to the records of steps
<= S (a killed run may have logged steps past its last checkpoint, which the resumed run logs again)
and tells TensorBoard to drop its events past S, so that no step appears twice.
"""

import json
import os
from typing import Any, Protocol

from absl import logging
import jax
import ml_collections
import tensorboardX

from lgdlm_jax import config as config_lib
from lgdlm_jax import errors
from lgdlm_jax.training import tracking

LOG_FILE = 'training_log.jsonl'
PLOT_FILE = 'training_log.png'  # lgdlm_jax.training.log_plot of LOG_FILE, rewritten at each evaluation
TENSORBOARD_DIR = 'tensorboard'


class Sink(Protocol):
  """Where records go: each gets every record, as {name: number} at its step."""

  def write(self, step: int, record: dict[str, Any]) -> None: ...

  def close(self) -> None: ...


class _Jsonl:
  def __init__(self, path: str, resume_step: int | None):
    truncate_log(path, -1 if resume_step is None else resume_step)
    self._file = open(path, 'a')

  def write(self, step: int, record: dict[str, Any]) -> None:
    self._file.write(json.dumps({'step': step, **record}) + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class _TensorBoard:
  def __init__(self, path: str, resume_step: int | None):
    # TensorBoard discards the events of earlier runs at steps >= purge_step.
    self._writer = tensorboardX.SummaryWriter(path, purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, record: dict[str, Any]) -> None:
    for key, value in record.items():
      if isinstance(value, (int, float)):
        self._writer.add_scalar(key, value, step)

  def close(self) -> None:
    self._writer.close()


class MetricsLog:
  """Writes each record to every sink: one JSON line, TensorBoard scalars, and W&B when it is on.

  resume_step: the step of the checkpoint this run resumed from (None = a fresh run, whose log
  starts empty).
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, resume_step: int | None = None):
    self._workdir = workdir
    self._sinks: list[Sink] = []
    if jax.process_index() != 0:
      return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, config_lib.CONFIG_FILE), 'w') as f:
      f.write(config.to_json(indent=2))
    self._sinks.append(_Jsonl(os.path.join(workdir, LOG_FILE), resume_step))
    self._sinks.append(_TensorBoard(os.path.join(workdir, TENSORBOARD_DIR), resume_step))
    wandb = tracking.wandb_sink(workdir, config, resumed=resume_step is not None)
    if wandb is not None:
      self._sinks.append(wandb)

  def write(self, step: int, record: dict[str, Any], prefix: str = '') -> None:
    line = {prefix + k: _plain(v) for k, v in record.items()}
    try:
      for sink in self._sinks:
        sink.write(step, line)
    except OSError as e:  # a full disk, a workdir made read-only
      raise errors.StorageError(
        f'could not write the log of step {step} to {self._workdir} '
        f'({e.strerror or e}); the checkpoints saved before it are intact'
      ) from e

  def close(self) -> None:
    for sink in self._sinks:
      try:
        sink.close()
      except OSError as e:  # on the way out of a run stopped by the same full disk: its error is the one to see
        logging.warning(
          'Could not finish writing the logs in %s: %s; lines written before are kept', self._workdir, e.strerror or e
        )
    self._sinks = []


def truncate_log(path: str, last_step: int) -> None:
  """Keeps the records of steps <= last_step (none when it is -1), atomically; says what it dropped
  (the steps this run logs again, and any line cut short by a killed process)."""
  if not os.path.exists(path):
    return
  kept, dropped, torn = [], 0, 0
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        step = json.loads(line)['step']
      except (json.JSONDecodeError, KeyError, TypeError):
        torn += 1
        continue
      if step <= last_step:
        kept.append(line if line.endswith('\n') else line + '\n')
      else:
        dropped += 1
  if dropped or torn:
    logging.warning(
      '%s: dropped %d record(s) of steps after %d (this run logs them again) and %d unreadable line(s)',
      path,
      dropped,
      last_step,
      torn,
    )
  staged = path + '.tmp'
  with open(staged, 'w') as f:
    f.writelines(kept)
  os.replace(staged, path)


def _plain(value: Any) -> Any:
  """Device or numpy scalars -> Python numbers for JSON."""
  try:
    return value.item()
  except AttributeError:
    return value


def read_log(workdir: str) -> list[dict[str, Any]]:
  """The records of WORKDIR/training_log.jsonl; a line that is not a record with a step (the last one
  cut short by a killed process, or a damaged file) is left out, and said so in one warning."""
  path = os.path.join(workdir, LOG_FILE)
  records, unreadable = [], []
  with open(path, encoding='utf-8', errors='replace') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None
      if isinstance(record, dict) and isinstance(record.get('step'), int):
        records.append(record)
      else:
        unreadable.append(number)
  if unreadable:
    logging.warning(
      '%s: left out %d unreadable line(s) (line %s)',
      path,
      len(unreadable),
      ', '.join(map(str, unreadable[:5])) + (', ...' if len(unreadable) > 5 else ''),
    )
  return records
