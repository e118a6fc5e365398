"""Training checkpoints by layout version: version 2 is written (with or without the data iterators),
version 1 (older workdirs) resumes, a newer version is refused."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import data
from lgdlm_jax import errors
from lgdlm_jax.checkpoints import manager as checkpoint

STATE = {'w': np.arange(3, dtype=np.float32), 'step': np.int32(4)}
STEP = 4


def _config():
  config = config_lib.default_config()
  config.data.synthetic_num_samples = 64
  config.training.update(train_batch_size=4, eval_batch_size=4)
  return config_lib.finalize(config)


def _iterator():
  iterator, _ = data.make_datasets(_config(), process_index=0, process_count=1)
  return iterator


def _abstract():
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), STATE)


def _restore(workdir, iterator=None):
  manager = checkpoint.make_manager(str(workdir), _config())
  try:
    return (checkpoint.layout_version(manager, manager.latest_step()),
            checkpoint.restore_latest(manager, _abstract(), iterator))
  finally:
    manager.close()


def _save(workdir, iterator=None):
  manager = checkpoint.make_manager(str(workdir), _config())
  checkpoint.save(manager, STEP, STATE, iterator)
  manager.wait_until_finished()
  manager.close()


def _batches(iterator, count):
  return [next(iterator)['input_ids'] for _ in range(count)]


def test_version_2_restores_the_state_and_the_iterator_exactly(tmp_path):
  iterator = _iterator()
  _batches(iterator, 3)
  _save(tmp_path, iterator)
  expected = _batches(iterator, 2)
  resumed = _iterator()
  version, state = _restore(tmp_path, resumed)
  assert version == checkpoint.LAYOUT_VERSION == 2
  np.testing.assert_array_equal(state['w'], STATE['w'])
  np.testing.assert_array_equal(np.stack(_batches(resumed, 2)), np.stack(expected))


def test_without_a_data_item_the_iterator_starts_where_the_step_implies(tmp_path):
  _save(tmp_path)
  resumed = _iterator()
  version, state = _restore(tmp_path, resumed)
  assert version == 2 and int(state['step']) == STEP
  fresh = _iterator()
  np.testing.assert_array_equal(next(resumed)['input_ids'], _batches(fresh, STEP + 1)[STEP])


def test_a_version_1_checkpoint_still_resumes(tmp_path):
  """Written as lgdlm_jax wrote checkpoints before versions: `state` and a JSON `data` position."""
  manager = ocp.CheckpointManager(str(tmp_path / checkpoint.CHECKPOINTS_DIR), item_names=('state', 'data'),
                                  options=ocp.CheckpointManagerOptions(create=True))
  old_position = {'epoch': 0, 'index': 16, 'skipped': 0}
  manager.save(STEP, args=ocp.args.Composite(state=ocp.args.StandardSave(STATE), data=ocp.args.JsonSave(old_position)))
  manager.wait_until_finished()
  manager.close()
  resumed = _iterator()
  version, state = _restore(tmp_path, resumed)
  assert version == 1
  np.testing.assert_array_equal(state['w'], STATE['w'])
  # The old position (16 rows = 4 batches of 4) is where step 4 starts anyway.
  np.testing.assert_array_equal(next(resumed)['input_ids'], _batches(_iterator(), STEP + 1)[STEP])


def test_a_newer_version_is_refused_naming_it(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), _config())
  manager.save(STEP, args=ocp.args.Composite(state=ocp.args.StandardSave(STATE),
                                             meta=ocp.args.JsonSave({'layout_version': 3})))
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(errors.InputError, match='layout version 3; this lgdlm_jax reads up to 2'):
    _restore(tmp_path)
