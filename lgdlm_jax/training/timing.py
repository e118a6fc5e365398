"""Where a run's wall-clock time goes: compile, setup, data wait, step, evaluation, checkpoint, log.

    clock = PhaseClock()                 # from now on, time outside any phase counts as 'setup'
    with clock.compiles():               # jax's compiles count as 'compile', wherever they happen
      with clock.phase('step'): ...      # nested phases: the inner one gets the time
      clock.settle('other')              # time outside any phase counts as 'other' from now on
      record.update(clock.interval())    # {'time/PHASE': seconds since the last interval, 'time/wall': ...}
      totals = clock.totals()            # {'time_total/PHASE': seconds since the start, 'time_total/wall': ...}

This is the host's clock: at each moment exactly one phase is charged, so the phases add up to the
wall time. The train step runs asynchronously, so 'step' is the time the host spends dispatching
steps plus the time it blocks on their metrics (the loop fetches them one step late): while the
host waits for the data loader the device may still be computing the step before, and that
overlap is charged to 'data_wait'. 'compile' is what jax reports for tracing, lowering and XLA
compilation (or loading a compiled program from the compilation cache), taken out of the phase
it happened in.
"""

from collections.abc import Iterator
import contextlib
import threading
import time

import jax

PHASES = ('compile', 'setup', 'data_wait', 'step', 'eval', 'checkpoint', 'log', 'other')
# jax.monitoring's duration events of tracing, lowering to MLIR and XLA compilation (jax._src.dispatch).
_COMPILE_EVENTS = '/jax/core/compile/'


class PhaseClock:
  """The host's wall clock split into PHASES; see the module docstring."""

  def __init__(self):
    self._start = self._mark = self._interval_start = time.perf_counter()
    self._phase = 'setup'
    self._stack: list[str] = []
    self._totals = dict.fromkeys(PHASES, 0.0)
    self._at_interval = dict(self._totals)
    self._thread = threading.get_ident()
    self._compile_spans: list[tuple[float, float]] = []

  def _charge(self, then: str) -> None:
    now = time.perf_counter()
    self._totals[self._phase] += now - self._mark
    self._mark, self._phase = now, then

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    if name not in PHASES:
      raise ValueError(f'unknown phase {name!r}; expected one of {", ".join(PHASES)}')
    self._stack.append(self._phase)
    self._charge(name)
    try:
      yield
    finally:
      self._charge(self._stack.pop())

  def settle(self, name: str) -> None:
    """Time outside any phase counts as `name` from now on (called outside every phase)."""
    if self._stack:
      raise RuntimeError(f'settle({name!r}) inside the phase {self._phase!r}')
    self._charge(name)

  def _compiled(self, event: str, start: float, end: float, **kwargs) -> None:
    del kwargs
    if not event.startswith(_COMPILE_EVENTS) or threading.get_ident() != self._thread:
      return  # a compile on another thread (e.g. a data worker's) takes no time from this one's phases
    # A compile inside another (e.g. while tracing) is part of the outer one's span: counted once.
    inner = sum(e - s for s, e in self._compile_spans if s >= start and e <= end)
    self._compile_spans = [(s, e) for s, e in self._compile_spans if not (s >= start and e <= end)]
    self._compile_spans.append((start, end))
    seconds = end - start - inner
    self._totals['compile'] += seconds
    self._totals[self._phase] -= seconds  # it happened inside the phase being charged now

  @contextlib.contextmanager
  def compiles(self) -> Iterator['PhaseClock']:
    """Counts jax's compiles as 'compile' while open."""
    jax.monitoring.register_event_time_span_listener(self._compiled)
    try:
      yield self
    finally:
      jax.monitoring.unregister_event_time_span_listener(self._compiled)

  def interval(self) -> dict[str, float]:
    """Seconds per phase since the last interval (or the start), and the wall time they add up to."""
    self._charge(self._phase)
    spent = {f'time/{p}': self._totals[p] - self._at_interval[p] for p in PHASES}
    spent['time/wall'] = self._mark - self._interval_start
    self._at_interval, self._interval_start = dict(self._totals), self._mark
    return spent

  def totals(self) -> dict[str, float]:
    """Seconds per phase since the start, and the wall time they add up to."""
    self._charge(self._phase)
    return {**{f'time_total/{p}': self._totals[p] for p in PHASES}, 'time_total/wall': self._mark - self._start}


def summary_line(totals: dict[str, float]) -> str:
  """'Time: 41.2 s in all: compile 20.1 s (49%), ...' from `PhaseClock.totals()`; phases under 0.05 s left out."""
  wall = totals['time_total/wall']
  parts = [
    f'{p.replace("_", " ")} {totals[f"time_total/{p}"]:.1f} s ({100 * totals[f"time_total/{p}"] / wall:.0f}%)'
    for p in PHASES
    if totals[f'time_total/{p}'] >= 0.05
  ]
  return f'Time: {wall:.1f} s in all: ' + ', '.join(parts)
