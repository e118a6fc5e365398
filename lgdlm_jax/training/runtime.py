"""The run's processes: jax.distributed start-up, and preemption (SIGTERM) handling.

Start-up: jax.distributed on TPU pods, SLURM clusters, or explicit settings. A single process
needs nothing. Otherwise the coordinator, process count and process id come from (in this order)
the flags of `main`, the environment variables LGDLM_COORDINATOR_ADDRESS, LGDLM_NUM_PROCESSES and
LGDLM_PROCESS_ID, or JAX's own auto-detection on Cloud TPU and SLURM.
"""

import dataclasses
import os
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

ENV_PREFIX = 'LGDLM_'


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  @property
  def explicit(self) -> bool:
    return self.coordinator_address is not None


def from_env(environ: dict[str, str] | None = None) -> ProcessGroup:
  environ = os.environ if environ is None else environ
  get = lambda name: environ.get(ENV_PREFIX + name) or None
  count, pid = get('NUM_PROCESSES'), get('PROCESS_ID')
  return ProcessGroup(get('COORDINATOR_ADDRESS'), int(count) if count else None, int(pid) if pid else None)


def auto_detectable(environ: dict[str, str] | None = None) -> str | None:
  """The cluster JAX can detect by itself with more than one process, or None."""
  environ = os.environ if environ is None else environ
  if int(environ.get('SLURM_NTASKS', '1') or '1') > 1 and 'SLURM_JOB_ID' in environ:
    return 'slurm'
  if ',' in environ.get('TPU_WORKER_HOSTNAMES', ''):
    return 'cloud_tpu'
  return None


def maybe_initialize(group: ProcessGroup) -> None:
  """Calls jax.distributed.initialize when this run spans several processes; else does nothing."""
  if group.explicit:
    if group.num_processes is None or group.process_id is None:
      raise ValueError(
        'a coordinator address needs the process count and this process id as well '
        f'(got num_processes={group.num_processes}, process_id={group.process_id})'
      )
    if not 0 <= group.process_id < group.num_processes:
      raise ValueError(f'process_id={group.process_id} is not in [0, num_processes={group.num_processes})')
    _use_gloo_on_cpu()
    jax.distributed.initialize(group.coordinator_address, group.num_processes, group.process_id)
  elif (cluster := auto_detectable()) is not None:
    logging.info('Initialising jax.distributed from the %s environment', cluster)
    jax.distributed.initialize()
  else:
    return
  logging.info(
    'Process %d of %d; %d local and %d global devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def _use_gloo_on_cpu() -> None:
  # CPU devices of several processes need a collectives implementation; accelerators have their own.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')


class PreemptionWatch:
  """On SIGTERM, every process stops at the same step so that one checkpoint covers all.

  With several processes JAX's preemption service (started by jax.distributed.initialize) catches
  SIGTERM on any process and agrees on a step all of them reach; with one process a signal handler
  sets a flag checked after each step.
  """

  def __init__(self):
    self._multi_process = jax.process_count() > 1
    self._signalled = threading.Event()
    self._previous_handler = None
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, lambda *_: self._signalled.set())

  def reached(self, step: int) -> bool:
    """True when the run should save at `step` and stop; call it after every step on every process."""
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled.is_set()

  def close(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None
