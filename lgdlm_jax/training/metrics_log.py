"""Run logs in the workdir, written by process 0: training_log.jsonl, TensorBoard events, config.json.

A run that resumes from the checkpoint of step S first cuts the log back to the records of steps
<= S (a killed run may have logged steps past its last checkpoint, which the resumed run logs again)
and tells TensorBoard to drop its events past S, so that no step appears twice.
"""

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import tensorboardX

from lgdlm_jax import config as config_lib
from lgdlm_jax import errors

LOG_FILE = 'training_log.jsonl'
PLOT_FILE = 'training_log.png'  # lgdlm_jax.training.log_plot of LOG_FILE, rewritten at each evaluation
TENSORBOARD_DIR = 'tensorboard'


class MetricsLog:
  """Appends one JSON line per record and mirrors the scalars to TensorBoard.

  resume_step: the step of the checkpoint this run resumed from (None = a fresh run, whose log
  starts empty).
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, resume_step: int | None = None):
    self._active = jax.process_index() == 0
    self._path = os.path.join(workdir, LOG_FILE)
    self._jsonl = None
    self._tensorboard = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, config_lib.CONFIG_FILE), 'w') as f:
      f.write(config.to_json(indent=2))
    path = os.path.join(workdir, LOG_FILE)
    truncate_log(path, -1 if resume_step is None else resume_step)
    self._jsonl = open(path, 'a')
    # TensorBoard discards the events of earlier runs at steps >= purge_step.
    self._tensorboard = tensorboardX.SummaryWriter(
      os.path.join(workdir, TENSORBOARD_DIR), purge_step=None if resume_step is None else resume_step + 1
    )

  def write(self, step: int, record: dict[str, Any], prefix: str = '') -> None:
    if not self._active:
      return
    line = {'step': step, **{prefix + k: _plain(v) for k, v in record.items()}}
    try:
      self._jsonl.write(json.dumps(line) + '\n')
      self._jsonl.flush()
      if self._tensorboard is not None:
        for key, value in line.items():
          if key != 'step' and isinstance(value, (int, float)):
            self._tensorboard.add_scalar(key, value, step)
    except OSError as e:  # a full disk, a workdir made read-only
      raise errors.StorageError(
        f'could not write the log of step {step} to {os.path.dirname(self._path)} '
        f'({e.strerror or e}); the checkpoints saved before it are intact'
      ) from e

  def close(self) -> None:
    try:
      if self._jsonl is not None:
        self._jsonl.close()
      if self._tensorboard is not None:
        self._tensorboard.close()
    except OSError as e:  # on the way out of a run stopped by the same full disk: its error is the one to see
      logging.warning(
        'Could not finish writing the logs in %s: %s; lines written before are kept',
        os.path.dirname(self._path),
        e.strerror or e,
      )


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
