"""launch/slurm.sbatch run for real: a one-node SLURM cluster on this machine (launch/slurm_cpu_check.sh),
2 tasks x 2 CPU devices, scancel mid-run, and the resubmitted job resuming from the step every task saved.

Needs root and SLURM (`bash launch/slurm_cpu_check.sh --install-only` installs it with apt-get; .ci/run
does); skipped, saying so, where they are missing.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lgdlm_jax.training import metrics_log
from tests.helpers import runs

SLURM_TOOLS = ('slurmctld', 'slurmd', 'sbatch', 'scancel', 'munged', 'unshare')
DAEMONS = ('slurmctld', 'slurmd', 'munged')
CANCEL_AFTER = 2


def _running(names) -> list[str]:
  found = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/comm') as f:
        comm = f.read().strip()
    except OSError:
      continue
    if comm in names:
      found.append(f'{comm} ({pid})')
  return found


@pytest.mark.slow  # about 1-2 minutes on an idle 2-core machine: two jobs of two processes, each compiling
def test_scancel_saves_one_step_on_every_task_and_the_resubmitted_job_resumes(tmp_path):
  missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
  if missing or os.geteuid() != 0:
    pytest.skip(
      f'needs root and SLURM (missing: {", ".join(missing) or "root"}); '
      'bash launch/slurm_cpu_check.sh --install-only installs SLURM'
    )
  assert not _running(DAEMONS), 'SLURM or munge daemons are already running on this machine'
  main_args = ['--config', runs.SMOKE] + [f'--config.{k}={v}' for k, v in runs.TINY_OVERRIDES.items()]
  result = subprocess.run(
    [
      'bash',
      'launch/slurm_cpu_check.sh',
      '--workdir',
      str(tmp_path),
      '--cancel-after',
      str(CANCEL_AFTER),
      '--timeout',
      '900',
      '--',
      *main_args,
    ],
    cwd=runs.REPO,
    capture_output=True,
    text=True,
    timeout=2400,
  )
  sys.stderr.write(result.stderr[-3000:])
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])

  # Both tasks saved the same step at or after CANCEL_AFTER logged steps; the second job resumed
  # from it (the log holds every step once) and trained two more.
  saved = summary['preempted_step']
  assert saved >= CANCEL_AFTER and summary['final_step'] == saved + 2
  steps = [r['step'] for r in metrics_log.read_log(str(tmp_path / 'run')) if 'loss' in r]
  assert steps == list(range(1, saved + 3))
  assert {str(saved), str(saved + 2)} <= set(os.listdir(tmp_path / 'run' / 'checkpoints'))
  job1 = (tmp_path / f'slurm-{summary["jobs"][0]}.out').read_text()
  assert job1.count(f'Preempted: saved step {saved} ') == 2 and 'CANCELLED' in job1
  # The daemons ended with the script.
  assert not _running(DAEMONS)
  assert (tmp_path / 'slurm_logs' / 'slurmctld.log').exists()
