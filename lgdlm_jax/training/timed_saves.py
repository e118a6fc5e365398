"""`training.save_every_minutes`: a save when that much wall time has passed since the last one.

    timed = TimedSaves(config.training.save_every_minutes)
    ... after every step, on every process:  if timed.due() or ...: save(); timed.saved()

With several processes the decision is process 0's, broadcast to all, so that every process saves
the same step (a save is collective: one process saving alone would wait for the others forever).
"""

from collections.abc import Callable
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

Clock = Callable[[], float]


class TimedSaves:
  def __init__(self, minutes: float, clock: Clock = time.monotonic):
    self._seconds = 60.0 * minutes
    self._clock = clock
    self._last = clock() if minutes else 0.0

  def due(self) -> bool:
    """Whether a save is due after this step; call it after every step on every process."""
    if not self._seconds:
      return False
    due = self._clock() - self._last >= self._seconds
    if jax.process_count() > 1:
      due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
    return due

  def saved(self) -> None:
    """A save (of any cause) just started: the wall time counts from now."""
    if self._seconds:
      self._last = self._clock()
