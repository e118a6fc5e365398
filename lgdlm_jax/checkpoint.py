"""Orbax checkpoints in the workdir: the train state and the data-iterator position, saved together.

Saves are asynchronous (training continues while the arrays are written), keep the newest
`training.keep_checkpoints`, and are restored onto the same shardings the state was created with.
"""

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINTS_DIR = 'checkpoints'  # under the workdir: one folder per saved step
STATE_ITEM = 'state'  # the TrainState; 'data' holds the iterator position
DATA_ITEM = 'data'


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.training.keep_checkpoints,
      enable_async_checkpointing=True,
      create=True,
  )
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR), options=options,
                               item_names=(STATE_ITEM, DATA_ITEM))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict[str, Any]) -> None:
  """Starts an asynchronous save of `state` and the iterator position at `step`."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(data_state)))


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
  """(state, data_state) of the newest checkpoint, onto abstract_state's shardings; None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored.state, restored.data


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
