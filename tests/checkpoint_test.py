"""Training checkpoints by layout version: version 2 is written (with or without the data iterators),
version 1 (older workdirs) resumes, a newer version is refused; a damaged newest checkpoint is
skipped and set aside, and a save that cannot be written names its step."""

import errno
import os

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
    return (
      checkpoint.layout_version(manager, manager.latest_step()),
      checkpoint.restore_latest(manager, _abstract(), iterator),
    )
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
  manager = ocp.CheckpointManager(
    str(tmp_path / checkpoint.CHECKPOINTS_DIR),
    item_names=('state', 'data'),
    options=ocp.CheckpointManagerOptions(create=True),
  )
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
  manager.save(
    STEP, args=ocp.args.Composite(state=ocp.args.StandardSave(STATE), meta=ocp.args.JsonSave({'layout_version': 3}))
  )
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(errors.InputError, match='layout version 3; this lgdlm_jax reads up to 2'):
    _restore(tmp_path)


def _save_steps(workdir, *steps):
  """Saves each step with STATE's `w` set to the step, and the iterator after `step` batches."""
  manager = checkpoint.make_manager(str(workdir), _config())
  iterator = _iterator()
  for step in steps:
    iterator.start_at_step(step)
    checkpoint.save(manager, step, {'w': np.full(3, step, np.float32), 'step': np.int32(step)}, iterator)
  checkpoint.finish(manager)
  manager.close()


def _half(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one_and_is_set_aside(tmp_path, caplog):
  _save_steps(tmp_path, 4, 8, 12)
  _half(tmp_path / 'checkpoints' / '12' / 'data' / 'process_0-of-1.json')
  os.remove(tmp_path / 'checkpoints' / '8' / 'meta' / 'metadata')
  resumed = _iterator()
  version, state = _restore(tmp_path, resumed)
  np.testing.assert_array_equal(state['w'], np.full(3, 4, np.float32))
  np.testing.assert_array_equal(next(resumed)['input_ids'], _batches(_iterator(), 5)[4])
  warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Skipping')]
  assert len(warnings) == 2
  assert 'step 12' in warnings[0] and 'process_0-of-1.json cannot be read (JSONDecodeError' in warnings[0]
  assert 'step 8' in warnings[1] and 'meta/metadata is missing' in warnings[1]
  assert sorted(os.listdir(tmp_path / 'damaged_checkpoints')) == ['12', '8']  # kept for inspection
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4']
  manager = checkpoint.make_manager(str(tmp_path), _config())
  assert manager.latest_step() == 4  # never the newest again, and the step can be saved anew
  checkpoint.save(manager, 8, STATE)
  checkpoint.finish(manager)
  manager.close()


def test_with_no_intact_checkpoint_one_error_names_every_step_and_nothing_moves(tmp_path):
  _save_steps(tmp_path, 4, 8)
  for step in (4, 8):
    _half(tmp_path / 'checkpoints' / str(step) / 'state' / '_METADATA')
  with pytest.raises(
    errors.InputError,
    match=r'no checkpoint in \S+ can be restored: step 8: \S+/8/state/_METADATA '
    r'cannot be read .*; step 4: \S+/4/state/_METADATA cannot be read',
  ):
    _restore(tmp_path, _iterator())
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '8']
  assert not os.path.exists(tmp_path / 'damaged_checkpoints')


def test_a_save_that_cannot_be_written_names_its_step_and_the_one_before_restores(tmp_path):
  _save_steps(tmp_path, 4)
  manager = checkpoint.make_manager(str(tmp_path), _config())
  iterator = _iterator()

  def full_disk():
    raise OSError(errno.ENOSPC, 'No space left on device')

  iterator.get_state = full_disk
  with pytest.raises(
    errors.StorageError,
    match=r'^could not write the checkpoint of step 8 to \S+/checkpoints/8: '
    r'No space left on device; the checkpoints saved before it are intact',
  ):
    checkpoint.save(manager, 8, STATE, iterator)
    checkpoint.finish(manager)
  manager.close()
  assert [n for n in os.listdir(tmp_path / 'checkpoints') if n.isdigit()] == ['4']  # no partial step 8
  _, state = _restore(tmp_path, _iterator())
  np.testing.assert_array_equal(state['w'], np.full(3, 4, np.float32))
