"""The data pipeline in two real processes (jax.distributed on localhost, no model): disjoint shares of
the one global order, every process's iterator state in the checkpoint, exact resume with
skip_bad_files, a resume on another process count (2 -> 1 and 1 -> 2), and a bad-sample stop taken by both at once.

`python -m tests.data_multiprocess_test PORT PID WORKDIR DATA STEPS SAVE_AT MAX_BAD_FRACTION` is one process.
"""

import json
import os
import subprocess
import sys

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import pytest

from lgdlm_jax import data
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.training import runtime
from tests.helpers import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = (3, 12)  # samples whose latent has the wrong size
TOTAL_STEPS, SAVE_AT = 9, 4


def _config(data_dir, max_bad_fraction):
  return datasets.make_config(data_dir=data_dir, batch=4, skip=True, max_bad_fraction=max_bad_fraction)


def _state():
  mesh = Mesh(np.asarray(jax.devices()), ('d',))
  return {'w': jax.device_put(np.arange(3.0), NamedSharding(mesh, PartitionSpec()))}


def process_main(port, pid, workdir, data_dir, steps, save_at, max_bad_fraction):
  """One of the two processes: reads `steps` batches (resuming from workdir), saves at save_at."""
  runtime.maybe_initialize(runtime.ProcessGroup(f'127.0.0.1:{port}', 2, int(pid)))
  iterator, _ = data.make_datasets(_config(data_dir, float(max_bad_fraction)))
  manager = checkpoint.make_manager(workdir, datasets.make_config())
  state = _state()
  restored = checkpoint.restore_latest(
    manager, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state), iterator
  )
  start = 0 if restored is None else manager.latest_step()
  rows, stopped_at = {}, None
  try:
    for step in range(start, int(steps)):
      rows[step] = datasets.ids_of(next(iterator))
      iterator.agree_on_bad_samples()  # what the training loop does after every step
      if step + 1 == int(save_at):
        checkpoint.save(manager, step + 1, state, iterator)
  except data.DataError as e:
    stopped_at = step
    print(f'stopped: {e}', flush=True)
  manager.wait_until_finished()
  manager.close()
  iterator.close()
  with open(os.path.join(workdir, f'rows{pid}.json'), 'w') as f:
    json.dump({'rows': rows, 'skipped': iterator.num_skipped, 'stopped_at': stopped_at}, f)


def _run_two(tmp_path, workdir, steps, save_at=0, max_bad_fraction=0.5):
  port = data_test_free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        'tests.data_multiprocess_test',
        str(port),
        str(pid),
        str(workdir),
        str(tmp_path / 'data'),
        str(steps),
        str(save_at),
        str(max_bad_fraction),
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for pid in range(2)
  ]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], '\n'.join(o[-3000:] for o in outputs)
  results = []
  for pid in range(2):
    with open(os.path.join(workdir, f'rows{pid}.json')) as f:
      results.append(json.load(f))
  return results


def data_test_free_port():
  import socket  # pylint: disable=g-import-not-at-top

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _make_data(tmp_path):
  root = str(tmp_path / 'data')
  _, latent_dir = datasets.make_dirs(root, 22, layout='data_dir')
  for i in BAD:
    np.save(os.path.join(latent_dir, f's{i:03d}.npy'), np.zeros(1, np.float32))
  return root


@pytest.mark.slow  # 4 short-lived processes start jax (about 10 s each on 2 busy cores); no model is compiled
def test_two_processes_share_the_global_order_and_resume_exactly(tmp_path):
  data_dir = _make_data(tmp_path)
  with data.make_datasets(_config(data_dir, 0.5), process_index=0, process_count=1)[0] as single:
    reference = [datasets.ids_of(next(single)) for _ in range(TOTAL_STEPS)]  # the one global order
    steps_per_epoch, num_bad_met = single.steps_per_epoch, single.num_skipped
  assert num_bad_met >= 1

  workdir = tmp_path / 'run'
  first = _run_two(tmp_path, workdir, SAVE_AT, save_at=SAVE_AT)
  saved = sorted(f for f in os.listdir(workdir / 'checkpoints' / str(SAVE_AT) / 'data') if f.endswith('.json'))
  assert saved == ['process_0-of-2.json', 'process_1-of-2.json']  # every process's state
  second = _run_two(tmp_path, workdir, TOTAL_STEPS)  # resumes at SAVE_AT from the saved states
  rows = [{**a['rows'], **b['rows']} for a, b in zip(first, second)]
  for step in range(TOTAL_STEPS):
    zero, one = rows[0][str(step)], rows[1][str(step)]
    assert not set(zero) & set(one)
    assert zero + one == reference[step], step  # process p holds rows [2p, 2p + 2) of the global batch
  for epoch in range(TOTAL_STEPS // steps_per_epoch):
    seen = [i for s in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch) for i in reference[s]]
    assert not set(seen) & set(BAD) and len(set(seen)) >= len(seen) - len(BAD)  # an epoch, bad ones replaced
  assert [r['skipped'] for r in second] == [num_bad_met] * 2  # each counted once, agreed by both processes

  # One process resumes the two-process checkpoint: from the global batch of the saved step on.
  manager = checkpoint.make_manager(str(workdir), datasets.make_config())
  with data.make_datasets(_config(data_dir, 0.5), process_index=0, process_count=1)[0] as alone:
    state = _state()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    checkpoint.restore_latest(manager, abstract, alone)
    assert [datasets.ids_of(next(alone)) for _ in range(TOTAL_STEPS - SAVE_AT)] == reference[SAVE_AT:]
  manager.close()


@pytest.mark.slow  # 2 short-lived processes start jax
def test_too_many_bad_samples_stop_both_processes_at_the_same_step(tmp_path):
  _make_data(tmp_path)
  results = _run_two(tmp_path, tmp_path / 'stop', TOTAL_STEPS, max_bad_fraction=0.0)  # none allowed
  stops = [r['stopped_at'] for r in results]
  assert stops[0] is not None and stops[0] == stops[1], results
  # Only one process read the bad sample; the other stopped with it, told by the exchange.
  assert sorted(len(r['rows']) for r in results) == [stops[0] + 1] * 2


if __name__ == '__main__':
  process_main(*sys.argv[1:])


@pytest.mark.slow  # 2 short-lived processes start jax
def test_a_one_process_checkpoint_resumes_on_two_processes(tmp_path):
  data_dir = _make_data(tmp_path)
  workdir = tmp_path / 'run'
  with data.make_datasets(_config(data_dir, 0.5), process_index=0, process_count=1)[0] as single:
    reference = [datasets.ids_of(next(single)) for _ in range(TOTAL_STEPS)]
  with data.make_datasets(_config(data_dir, 0.5), process_index=0, process_count=1)[0] as alone:
    for _ in range(SAVE_AT):
      next(alone)
    manager = checkpoint.make_manager(str(workdir), datasets.make_config())
    checkpoint.save(manager, SAVE_AT, _state(), alone)
    checkpoint.finish(manager)
    manager.close()
  two = _run_two(tmp_path, workdir, TOTAL_STEPS)  # no process_I-of-2 file: from global batch SAVE_AT on
  for step in range(SAVE_AT, TOTAL_STEPS):
    assert two[0]['rows'][str(step)] + two[1]['rows'][str(step)] == reference[step], step


@pytest.mark.slow  # 3 x 2 short-lived processes start jax
def test_a_checkpoint_damaged_for_one_process_is_skipped_by_both(tmp_path):
  data_dir = _make_data(tmp_path)
  with data.make_datasets(_config(data_dir, 0.5), process_index=0, process_count=1)[0] as single:
    reference = [datasets.ids_of(next(single)) for _ in range(TOTAL_STEPS)]
  workdir = tmp_path / 'run'
  _run_two(tmp_path, workdir, SAVE_AT, save_at=SAVE_AT)
  _run_two(tmp_path, workdir, SAVE_AT + 2, save_at=SAVE_AT + 2)
  damaged_file = workdir / 'checkpoints' / str(SAVE_AT + 2) / 'data' / 'process_1-of-2.json'
  damaged_file.write_text(damaged_file.read_text()[:20])  # process 0 could restore this step, process 1 not
  resumed = _run_two(tmp_path, workdir, TOTAL_STEPS)
  for step in range(SAVE_AT, TOTAL_STEPS):
    assert resumed[0]['rows'][str(step)] + resumed[1]['rows'][str(step)] == reference[step], step
  assert os.listdir(workdir / 'damaged_checkpoints') == [str(SAVE_AT + 2)]
