"""Reading a training workdir: config.json and the parameters, AdamW moments and step of a checkpoint.

Only the arrays asked for are read, found by name in the checkpoint's own metadata (`params`, the
optimizer's {count, mu, nu} wherever its chain nests them, `step`), so this reads checkpoints of
every layout version (lgdlm_jax.checkpoints.manager) and of any optimizer configuration.
"""

import dataclasses
import os
from typing import Any

import flax
import ml_collections

from lgdlm_jax import config as config_lib
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.convert import converted
from lgdlm_jax.convert import mapping
from lgdlm_jax.convert import moments as moments_lib
from lgdlm_jax.convert import update_counts


@dataclasses.dataclass(frozen=True)
class WorkdirCheckpoint:
  step: int  # the checkpoint's step (its folder's name)
  steps_done: int  # micro-batches applied (the saved TrainState.step; the same in checkpoints of a run)
  params: Any  # numpy, stored dtype
  moments: moments_lib.AdamMoments | None  # when asked for


def is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, config_lib.CONFIG_FILE)) and os.path.isdir(
    os.path.join(path, checkpoint.CHECKPOINTS_DIR)
  )


def load_config(workdir: str) -> ml_collections.FrozenConfigDict:
  """The full config the run wrote to WORKDIR/config.json (keys it predates take the schema's default)."""
  path = os.path.join(workdir, config_lib.CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{workdir} has no {config_lib.CONFIG_FILE}: not a training workdir')
  with open(path) as f:
    return config_lib.from_json(f.read(), source=path)


def saved_steps(workdir: str) -> list[int]:
  """The steps of the committed checkpoints in the workdir, oldest first."""
  root = os.path.join(workdir, checkpoint.CHECKPOINTS_DIR)
  if not os.path.isdir(root):
    return []
  return sorted(int(name) for name in os.listdir(root) if name.isdigit())


def resolve_step(workdir: str, step: int | None) -> int:
  steps = saved_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'{workdir} has no checkpoints under {checkpoint.CHECKPOINTS_DIR}/')
  if step is not None and step not in steps:
    raise FileNotFoundError(f'{workdir} has no checkpoint at step {step}; it has steps {steps}')
  return steps[-1] if step is None else step


def read(
  workdir: str,
  model_config: ml_collections.ConfigDict,
  step: int | None = None,
  with_moments: bool = False,
  params_tree: str = 'params',
) -> WorkdirCheckpoint:
  """The checkpoint at `step` (the newest by default), its params checked against `model_config`
  before anything is read. params_tree: 'params', or 'ema_params' for the moving average
  (lgdlm_jax.training.ema)."""
  step = resolve_step(workdir, step)
  path = os.path.join(os.path.abspath(workdir), checkpoint.CHECKPOINTS_DIR, str(step), checkpoint.STATE_ITEM)
  try:
    return _read_step(workdir, path, step, model_config, with_moments, params_tree)
  except converted.DamagedCheckpointError as e:
    others = [s for s in saved_steps(workdir) if s != step]
    hint = f'; it also has steps {others} (--step picks one)' if others else ''
    raise converted.DamagedCheckpointError(f'{e} (step {step} of {workdir}{hint})') from e


def _read_step(
  workdir: str, path: str, step: int, model_config: ml_collections.ConfigDict, with_moments: bool, params_tree: str
) -> WorkdirCheckpoint:
  stored = converted.metadata(path)
  if not stored.get(params_tree):
    raise mapping.ConversionError(f'{workdir} (step {step}) holds no {params_tree}')
  try:
    mapping.check_params(flax.traverse_util.flatten_dict(stored[params_tree]), model_config)
  except mapping.ConversionError as e:
    raise mapping.ConversionError(f'{workdir} (step {step}): {e}') from e
  wanted: dict[str, Any] = {params_tree: stored[params_tree], 'step': stored['step']}
  adam_path = moments_lib.adam_state_path(stored.get('opt_state')) if with_moments else None
  if with_moments and adam_path is None:
    raise mapping.ConversionError(f'{workdir} (step {step}): its optimizer state holds no AdamW moments')
  if adam_path is not None:
    wanted['opt_state'] = _only(stored['opt_state'], adam_path)
  restored = converted.restore_numpy(path, wanted)
  moments = None
  if adam_path is not None:
    adam = _at(restored['opt_state'], adam_path)
    count = int(adam['count'])
    # The pretraining modes' AdamW keeps a count per unit as well.
    unit_updates = update_counts.unless_all(adam.get(moments_lib.UNIT_COUNT_FIELD), count)
    moments = moments_lib.AdamMoments(count, adam['mu'], adam['nu'], {}, unit_updates)
  return WorkdirCheckpoint(step, int(restored['step']), restored[params_tree], moments)


def _only(tree: Any, path: tuple[Any, ...]) -> Any:
  """`tree` pruned to the subtree at `path`: lists keep their length with None elsewhere."""
  if not path:
    return tree
  key, rest = path[0], path[1:]
  if isinstance(tree, list):
    return [_only(child, rest) if i == key else None for i, child in enumerate(tree)]
  return {key: _only(tree[key], rest)}


def _at(tree: Any, path: tuple[Any, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree
