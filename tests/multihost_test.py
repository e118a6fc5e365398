"""Two processes x two CPU devices with jax.distributed on localhost: preemption, resume, and the
same losses as one process with four devices."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax.training import compile_cache
from lgdlm_jax.training import runtime
from tests.helpers import runs

LOCAL_DEVICES = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(workdir, steps: int, extra=()):
  overrides = {
    **runs.TINY_OVERRIDES,
    'training.num_train_steps': steps,
    'training.save_every': 100,
    'mesh.fsdp': 2,
    'mesh.min_shard_size': 1,
  }
  cmd = [sys.executable, '-m', 'lgdlm_jax.main', f'--config={runs.SMOKE}', f'--workdir={workdir}']
  return cmd + [f'--config.{k}={v}' for k, v in overrides.items()] + list(extra)


def _env(devices: int):
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')


def _start_processes(workdir, steps: int, log_dir):
  port = _free_port()
  procs = []
  for pid in range(2):
    log = open(os.path.join(log_dir, f'process{pid}.log'), 'w')
    extra = (f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={pid}')
    procs.append(
      (
        subprocess.Popen(
          _command(workdir, steps, extra), cwd=runs.REPO, env=_env(LOCAL_DEVICES), stdout=log, stderr=subprocess.STDOUT
        ),
        log,
      )
    )
  return procs


def _wait(procs, timeout: float = 600) -> list[int]:
  codes = [p.wait(timeout=timeout) for p, _ in procs]
  for _, log in procs:
    log.close()
  return codes


def _logged_steps(workdir) -> int:
  try:
    return len(runs.losses_of(workdir))
  except FileNotFoundError:
    return 0


@pytest.mark.slow
def test_sigterm_saves_one_step_everywhere_and_resume_matches_one_process(tmp_path):
  workdir = tmp_path / 'two_processes'
  procs = _start_processes(workdir, 1000, tmp_path)
  deadline = time.time() + 400
  while _logged_steps(workdir) < 2 and time.time() < deadline and all(p.poll() is None for p, _ in procs):
    time.sleep(0.5)
  assert _logged_steps(workdir) >= 2, open(tmp_path / 'process0.log').read()[-3000:]
  procs[1][0].send_signal(signal.SIGTERM)  # preempt one process only
  assert _wait(procs) == [0, 0]

  saved = [line for pid in range(2) for line in open(tmp_path / f'process{pid}.log') if 'Preempted: saved step' in line]
  assert len(saved) == 2, saved
  steps = {int(line.split('saved step ')[1].split()[0]) for line in saved}
  assert len(steps) == 1, saved  # both processes saved the same step
  preempted_at = steps.pop()
  assert str(preempted_at) in os.listdir(workdir / 'checkpoints')

  # The relaunch resumes from the preemption checkpoint and runs two more steps.
  total = preempted_at + 2
  assert _wait(_start_processes(workdir, total, tmp_path)) == [0, 0]
  two = runs.losses_of(workdir)
  assert sorted(two)[-2:] == [preempted_at + 1, total]

  # One process with four devices, uninterrupted, gives the same losses.
  single = tmp_path / 'one_process'
  subprocess.run(
    _command(single, total), cwd=runs.REPO, env=_env(2 * LOCAL_DEVICES), check=True, capture_output=True, timeout=600
  )
  one = runs.losses_of(single)
  assert sorted(one) == list(range(1, total + 1))
  np.testing.assert_allclose([two[s] for s in sorted(one)], [one[s] for s in sorted(one)], rtol=0, atol=1e-5)


def test_process_group_from_environment():
  group = runtime.from_env({'LGDLM_COORDINATOR_ADDRESS': 'h:1', 'LGDLM_NUM_PROCESSES': '4', 'LGDLM_PROCESS_ID': '3'})
  assert group == runtime.ProcessGroup('h:1', 4, 3)
  assert not runtime.from_env({}).explicit
  assert runtime.auto_detectable({'SLURM_NTASKS': '8', 'SLURM_JOB_ID': '1'}) == 'slurm'
  assert runtime.auto_detectable({'TPU_WORKER_HOSTNAMES': 'a,b'}) == 'cloud_tpu'
  assert runtime.auto_detectable({'SLURM_NTASKS': '1', 'SLURM_JOB_ID': '1'}) is None


@pytest.mark.parametrize(
  'group,match',
  [(runtime.ProcessGroup('h:1', None, 0), 'process count'), (runtime.ProcessGroup('h:1', 2, 2), 'process_id=2')],
)
def test_incomplete_or_wrong_process_group_is_refused(group, match):
  with pytest.raises(ValueError, match=match):
    runtime.maybe_initialize(group)


@pytest.mark.parametrize('processes,cached', [(1, True), (2, False)])
def test_compilation_cache_is_off_for_several_cpu_processes(processes, cached, tmp_path, monkeypatch):
  # Process 0 alone would load from the cache on a relaunch, and wait for the others compiling
  # longer than gloo waits (seen: the relaunch of a 2-process run failed on a loaded machine).
  monkeypatch.setattr(compile_cache.jax, 'process_count', lambda: processes)
  previous = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
  try:
    compile_cache.use(config_lib.finalize(runs.tiny_config()), str(tmp_path))
    assert jax.config.jax_enable_compilation_cache == cached
    assert (tmp_path / compile_cache.CACHE_DIR).is_dir() == cached
  finally:
    jax.config.update('jax_enable_compilation_cache', previous[0])
    jax.config.update('jax_compilation_cache_dir', previous[1])
