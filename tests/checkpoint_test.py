"""Training checkpoints by layout version: version 2 is written, version 1 (older workdirs) resumes."""

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lgdlm_jax import checkpoint
from lgdlm_jax import errors

STATE = {'w': np.arange(3, dtype=np.float32), 'step': np.int32(4)}
DATA = {'epoch': 0, 'index': 32, 'skipped': 0}


def _config():
  return ml_collections.ConfigDict({'training': {'keep_checkpoints': 3}})


def _abstract():
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), STATE)


def _restore(workdir):
  manager = checkpoint.make_manager(str(workdir), _config())
  try:
    return checkpoint.layout_version(manager, manager.latest_step()), checkpoint.restore_latest(manager, _abstract())
  finally:
    manager.close()


def _save(workdir, data_state):
  manager = checkpoint.make_manager(str(workdir), _config())
  checkpoint.save(manager, 4, STATE, data_state)
  manager.wait_until_finished()
  manager.close()


def test_version_2_is_written_and_restored_with_or_without_a_data_item(tmp_path):
  _save(tmp_path / 'with_data', DATA)
  version, (state, data_state) = _restore(tmp_path / 'with_data')
  assert version == checkpoint.LAYOUT_VERSION == 2 and data_state == DATA
  np.testing.assert_array_equal(state['w'], STATE['w'])
  _save(tmp_path / 'without_data', None)
  version, (state, data_state) = _restore(tmp_path / 'without_data')
  assert version == 2 and data_state is None and int(state['step']) == 4


def test_a_version_1_checkpoint_still_resumes(tmp_path):
  """Written as lgdlm_jax wrote checkpoints before versions: `state` and `data`, nothing else."""
  manager = ocp.CheckpointManager(str(tmp_path / checkpoint.CHECKPOINTS_DIR), item_names=('state', 'data'),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(STATE), data=ocp.args.JsonSave(DATA)))
  manager.wait_until_finished()
  manager.close()
  version, (state, data_state) = _restore(tmp_path)
  assert version == 1 and data_state == DATA
  np.testing.assert_array_equal(state['w'], STATE['w'])


def test_a_newer_version_is_refused_naming_it(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), _config())
  manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(STATE),
                                          meta=ocp.args.JsonSave({'layout_version': 3})))
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(errors.InputError, match='layout version 3; this lgdlm_jax reads up to 2'):
    _restore(tmp_path)
