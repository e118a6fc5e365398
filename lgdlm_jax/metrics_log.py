"""Run logs in the workdir, written by process 0: training_log.jsonl, TensorBoard events, config.json."""

import json
import os
from typing import Any

import jax
import ml_collections
import tensorboardX

LOG_FILE = 'training_log.jsonl'


class MetricsLog:
  """Appends one JSON line per record and mirrors the scalars to TensorBoard."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._tensorboard = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))
    # Append: a resumed run continues the same log.
    self._jsonl = open(os.path.join(workdir, LOG_FILE), 'a')
    self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, record: dict[str, Any], prefix: str = '') -> None:
    if not self._active:
      return
    line = {'step': step, **{prefix + k: _plain(v) for k, v in record.items()}}
    self._jsonl.write(json.dumps(line) + '\n')
    self._jsonl.flush()
    if self._tensorboard is not None:
      for key, value in line.items():
        if key != 'step' and isinstance(value, (int, float)):
          self._tensorboard.add_scalar(key, value, step)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tensorboard is not None:
      self._tensorboard.close()


def _plain(value: Any) -> Any:
  """Device or numpy scalars -> Python numbers for JSON."""
  try:
    return value.item()
  except AttributeError:
    return value


def read_log(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, LOG_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]
