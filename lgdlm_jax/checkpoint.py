"""Orbax checkpoints in the workdir: the train state and every process's data-iterator state, saved together.

Saves are asynchronous (training continues while the arrays are written), keep the newest
`training.keep_checkpoints`, and are restored onto the same shardings the state was created with.

Layout of one checkpoint, WORKDIR/checkpoints/<step>/, by version:
  1  `state` (the TrainState) and `data` (the old iterator's JSON position); written before versions
     were recorded, so a checkpoint without `meta` is version 1. Still resumed: its data continue
     from the position the step implies.
  2  adds `meta` (JSON: {"layout_version": 2}); `data` is grain's own checkpoint of the iterator,
     one `process_I-of-N.json` per process, and may be absent.
A checkpoint without the data file of this process (none saved, e.g. converted from PyTorch, or
saved by another number of processes) restores the state, and the pipeline starts at the global
batch the restored step implies (lgdlm_jax.data.order_position).
"""

import json
import os
from typing import Any

from absl import logging
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from lgdlm_jax import data as data_lib
from lgdlm_jax import errors

CHECKPOINTS_DIR = 'checkpoints'  # under the workdir: one folder per saved step
STATE_ITEM = 'state'  # the TrainState; 'data' holds the iterator states, 'meta' the layout version
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


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: data_lib.TrainIterator | None = None) -> None:
  """Starts an asynchronous save of `state` at `step`; the iterator state (if any) is written before it returns."""
  items = {STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave({'layout_version': LAYOUT_VERSION})}
  if data_iterator is not None:
    items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items))


def layout_version(manager: ocp.CheckpointManager, step: int) -> int:
  if not os.path.exists(os.path.join(str(manager.directory), str(step), META_ITEM)):
    return 1
  return int(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta['layout_version'])


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iterator: data_lib.TrainIterator | None = None) -> Any | None:
  """The state of the newest checkpoint, onto abstract_state's shardings (None if none); positions data_iterator."""
  step = manager.latest_step()
  if step is None:
    return None
  version = layout_version(manager, step)
  if version > LAYOUT_VERSION:
    raise errors.InputError(f'the checkpoint at step {step} has layout version {version}; this lgdlm_jax reads up to '
                            f'{LAYOUT_VERSION}')
  items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
  data_dir = os.path.join(manager.directory, str(step), DATA_ITEM)  # the default step folder name: the step
  own_file = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
  has_own = os.path.isfile(os.path.join(data_dir, own_file))
  if data_iterator is not None and has_own:
    items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if data_iterator is not None and not has_own:
    others = sorted(f for f in os.listdir(data_dir) if f.startswith('process_')) if os.path.isdir(data_dir) else []
    logging.warning('The checkpoint of step %d has %s; reading from the global batch of step %d on', step,
                    f'data-iterator states of another process count ({others[0]}; this run: {own_file})'
                    if others else 'no data-iterator state', step)
    other_state = None
    if others:
      with open(os.path.join(data_dir, others[0])) as f:
        other_state = json.load(f)
    data_iterator.start_at_step(step, other_state)
  return restored[STATE_ITEM]


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
