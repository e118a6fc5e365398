"""Damaged checkpoints: what is wrong with a step that cannot be restored, and setting it aside.

A committed step can still be damaged (a file truncated or missing: a disk that lost its last
write, an interrupted copy). Resuming then falls back to the newest step that restores
(lgdlm_jax.checkpoints.manager.restore_latest); the damaged ones move to WORKDIR/damaged_checkpoints/
<step>, kept for inspection and out of the way of the run: Orbax would otherwise take a damaged
step for the newest, refuse to save that step again, and keep it while pruning intact older ones.
"""

import json
import os

from absl import logging
import jax
from jax.experimental import multihost_utils

DAMAGED_DIR = 'damaged_checkpoints'  # under the workdir, beside checkpoints/
# The JSON files of a step, relative to its folder; '*' is every process's data-iterator file.
_JSON_FILES = ('meta/metadata', 'state/_METADATA', 'data/*')


def _json_files(step_dir: str) -> list[str]:
  paths = []
  for pattern in _JSON_FILES:
    folder, name = os.path.split(pattern)
    if name == '*':
      folder_path = os.path.join(step_dir, folder)
      if os.path.isdir(folder_path):
        paths += [os.path.join(folder_path, f) for f in sorted(os.listdir(folder_path)) if f.endswith('.json')]
    elif os.path.isdir(os.path.join(step_dir, folder)):  # an item a step may lack (version 1 has no meta)
      paths.append(os.path.join(step_dir, pattern))
  return paths


def unreadable_file(step_dir: str) -> str | None:
  """What is wrong with the first of the step's JSON files (every process's) that cannot be read; None if all can.

  Checked before a restore, which every process must enter together: a file only one process reads
  (its data-iterator state) would otherwise fail there alone, inside the collective restore.
  """
  for path in _json_files(step_dir):
    try:
      with open(path) as f:
        json.load(f)
    except FileNotFoundError:
      return f'{path} is missing'
    except (OSError, ValueError) as e:
      return f'{path} cannot be read ({type(e).__name__}: {e})'
  return None


def diagnose(step_dir: str, error: BaseException) -> str:
  """One line saying what is wrong with the step whose restore raised `error`, naming the file."""
  text = str(error).split(' [tensorstore_spec=')[0].strip()  # the spec that follows repeats the path
  first_line = text.splitlines()[0] if text else ''
  return f'{step_dir} cannot be restored ({type(error).__name__}: {first_line[:300]})'


def set_aside(checkpoints_dir: str, steps: list[int]) -> None:
  """Moves the steps' folders to WORKDIR/damaged_checkpoints/ (process 0; every process waits for it)."""
  if not steps:
    return
  target_dir = os.path.join(os.path.dirname(checkpoints_dir), DAMAGED_DIR)
  if jax.process_index() == 0:
    os.makedirs(target_dir, exist_ok=True)
    for step in steps:
      target, copy = os.path.join(target_dir, str(step)), 1
      while os.path.exists(target):  # the same step damaged again in a later attempt
        copy += 1
        target = os.path.join(target_dir, f'{step}-{copy}')
      os.rename(os.path.join(checkpoints_dir, str(step)), target)
      logging.warning('Moved the damaged checkpoint of step %d to %s', step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('damaged checkpoints set aside')
