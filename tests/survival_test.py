"""What a run survives: a resume under another data worker count, a damaged newest checkpoint, a full
disk during a save, and saves by wall time; each resumed run's losses equal the uninterrupted run's."""

import functools
import itertools
import os
import subprocess

import pytest

from lgdlm_jax import errors
from lgdlm_jax.checkpoints import damaged
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.training import loop
from lgdlm_jax.training import timed_saves
from tests.helpers.runs import losses_of
from tests.helpers.runs import saved_steps
from tests.helpers.runs import tiny_config

STEPS = {'training.num_train_steps': 6, 'training.save_every': 2, 'training.keep_checkpoints': 5}


def _config(cache, **overrides):
  # One compilation cache for the module: each run after the first loads its train-step program.
  return tiny_config(**{**STEPS, 'training.compilation_cache_dir': str(cache), **overrides})


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp('compilation_cache')


@pytest.fixture(scope='module')
def uninterrupted(cache, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  loop.run(_config(cache), workdir)
  return losses_of(workdir)


@pytest.mark.slow
def test_resume_under_another_worker_count_continues_exactly(cache, uninterrupted, tmp_path):
  workdir = str(tmp_path)
  for workers, steps in ((2, 2), (0, 4), (2, 6)):  # 2 -> 0 -> 2 workers, and init at step 0 with workers
    loop.run(_config(cache, **{'data.num_workers': workers, 'training.num_train_steps': steps}), workdir)
  assert losses_of(workdir) == uninterrupted


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _array_file(step_dir):
  folder = os.path.join(step_dir, 'state', 'd')
  return os.path.join(folder, sorted(os.listdir(folder))[0])


@pytest.mark.slow
@pytest.mark.parametrize(
  'damage',
  ['truncate the state metadata', 'delete an array file', 'truncate the data-iterator file', 'delete the meta item'],
)
def test_a_damaged_newest_checkpoint_is_skipped_and_kept(cache, uninterrupted, tmp_path, damage, caplog):
  workdir = str(tmp_path)
  loop.run(_config(cache, **{'training.num_train_steps': 4}), workdir)
  step_dir = os.path.join(workdir, checkpoint.CHECKPOINTS_DIR, '4')
  path, action = {
    'truncate the state metadata': (os.path.join(step_dir, 'state', '_METADATA'), _truncate),
    'delete an array file': (_array_file(step_dir), os.remove),
    'truncate the data-iterator file': (os.path.join(step_dir, 'data', 'process_0-of-1.json'), _truncate),
    'delete the meta item': (os.path.join(step_dir, 'meta', 'metadata'), os.remove),
  }[damage]
  action(path)
  loop.run(_config(cache), workdir)  # resumes from step 2
  assert losses_of(workdir) == uninterrupted
  skipped = [r.getMessage() for r in caplog.records if 'Skipping the checkpoint of step 4' in r.getMessage()]
  assert len(skipped) == 1 and (os.path.basename(path) in skipped[0] or step_dir in skipped[0]), skipped
  kept = os.path.join(workdir, damaged.DAMAGED_DIR, '4')
  assert os.path.isdir(kept) and os.path.exists(path.replace(step_dir, kept)) == (action is _truncate)
  assert saved_steps(workdir) == [2, 4, 6]  # step 4 saved anew, from the resumed run


def _fill(directory):
  """Writes a file into `directory` until its filesystem is full."""
  with open(os.path.join(directory, 'filler'), 'wb') as f:
    try:
      while True:
        f.write(b'\0' * 65536)
        f.flush()
    except OSError:
      pass


@pytest.fixture
def small_filesystem(tmp_path):
  """A 16 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
  mount_point = tmp_path / 'small'
  mount_point.mkdir()
  if (
    os.geteuid() != 0
    or subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(mount_point)], capture_output=True
    ).returncode
  ):
    pytest.skip('mounting a small tmpfs needs root')
  yield str(mount_point)
  subprocess.run(['umount', '-l', str(mount_point)], check=True)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_naming_the_step_and_the_previous_checkpoint_resumes(
  cache, uninterrupted, small_filesystem, monkeypatch
):
  workdir = os.path.join(small_filesystem, 'run')
  real_save = checkpoint.save

  def save_on_a_full_disk(manager, step, *args, **kwargs):
    if step == 4:
      checkpoint.finish(manager)  # step 2 is written whole; then the disk fills up
      _fill(small_filesystem)
    real_save(manager, step, *args, **kwargs)

  with monkeypatch.context() as patch:
    patch.setattr(checkpoint, 'save', save_on_a_full_disk)
    with pytest.raises(errors.StorageError, match=r'checkpoint of step 4 to \S+/checkpoints/4: No space left'):
      loop.run(_config(cache), workdir)
  assert saved_steps(workdir) == [2]  # the step that failed is no checkpoint
  os.remove(os.path.join(small_filesystem, 'filler'))
  loop.run(_config(cache), workdir)
  assert losses_of(workdir) == uninterrupted


@pytest.mark.slow
def test_saves_by_wall_time(cache, tmp_path, monkeypatch):
  clock = itertools.count(0.0, 31.0)  # each reading 31 s later than the one before
  monkeypatch.setattr(
    timed_saves, 'TimedSaves', functools.partial(timed_saves.TimedSaves, clock=lambda: float(next(clock)))
  )
  loop.run(
    _config(cache, **{'training.num_train_steps': 5, 'training.save_every': 0, 'training.save_every_minutes': 1.0}),
    str(tmp_path),
  )
  # Read at the start (0 s) and after every step; a save restarts the minute: due at 62 s after steps 2 and 4.
  assert saved_steps(str(tmp_path)) == [2, 4, 5]


def test_timed_saves_are_off_at_zero_and_count_from_the_last_save():
  now = [0.0]
  timed = timed_saves.TimedSaves(0.5, clock=lambda: now[0])
  now[0] = 29.0
  assert not timed.due()
  now[0] = 30.0
  assert timed.due()
  timed.saved()
  now[0] = 59.0
  assert not timed.due()
  assert not timed_saves.TimedSaves(0.0, clock=lambda: 1e9).due()
