"""Orbax checkpoints in the workdir: the train state and the data-iterator position, saved together.

Saves are asynchronous (training continues while the arrays are written), keep the newest
`training.keep_checkpoints`, and are restored onto the same shardings the state was created with.

Layout of one checkpoint, WORKDIR/checkpoints/<step>/, by version:
  1  `state` (the TrainState) and `data` (the iterator position); written before versions were
     recorded, so a checkpoint without `meta` is version 1. Still resumed.
  2  adds `meta` (JSON: {"layout_version": 2}), and `data` may be absent: the data then resume at
     the position the step implies (`step` global batches read), as a run started by init_from
     with an optimizer state does.
"""

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from lgdlm_jax import errors

CHECKPOINTS_DIR = 'checkpoints'  # under the workdir: one folder per saved step
STATE_ITEM = 'state'  # the TrainState; 'data' holds the iterator position, 'meta' the layout version
DATA_ITEM = 'data'
META_ITEM = 'meta'
LAYOUT_VERSION = 2


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.training.keep_checkpoints,
      enable_async_checkpointing=True,
      create=True,
  )
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR), options=options,
                               item_names=(STATE_ITEM, DATA_ITEM, META_ITEM))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict[str, Any] | None) -> None:
  """Starts an asynchronous save of `state` and the iterator position (None: not saved) at `step`."""
  items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({'layout_version': LAYOUT_VERSION}))
  if data_state is not None:
    items[DATA_ITEM] = ocp.args.JsonSave(data_state)
  manager.save(step, args=ocp.args.Composite(**items))


def layout_version(manager: ocp.CheckpointManager, step: int) -> int:
  if META_ITEM not in _items(manager, step):
    return 1
  return int(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta['layout_version'])


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict[str, Any] | None] | None:
  """(state, data_state or None) of the newest checkpoint, onto abstract_state's shardings; None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  version = layout_version(manager, step)
  if version > LAYOUT_VERSION:
    raise errors.InputError(f'the checkpoint at step {step} has layout version {version}; this lgdlm_jax reads up to '
                     f'{LAYOUT_VERSION}')
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  if DATA_ITEM in _items(manager, step):
    items[DATA_ITEM] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored.state, restored[DATA_ITEM] if DATA_ITEM in items else None


def _items(manager: ocp.CheckpointManager, step: int) -> set[str]:
  return set(os.listdir(os.path.join(str(manager.directory), str(step))))


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
