"""Preemption: on SIGTERM, every process stops at the same step so that one checkpoint covers all.

With several processes JAX's preemption service (started by jax.distributed.initialize) catches
SIGTERM on any process and agrees on a step all of them reach; with one process a signal handler
sets a flag checked after each step.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:

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
