"""Which latentDLM pretraining mode each step trains (docs/reference.md, "Pretraining modes").

    schedule = ModeSchedule('sequential', sequential=(('unconditional', 5), ('l2t', 10)), weights=(1, 1, 1), seed=0)
    mode = schedule.terms_at(step)   # on the host: a Mode, the program this step runs

`unconditional`, `l2t` and `t2l` train one mode for the whole run. `sequential` runs the entries of
its schedule in turn, each for its number of steps, and starts again after the last. `random` draws
a mode for every step with the odds `weights` from a hash of (seed, step) alone, so that
every process draws the same mode (and freezes the same parameters) without talking to the others,
and a resumed run draws what the uninterrupted one would have. The train step is compiled once per
mode it meets (lgdlm_jax.training.step.TrainPrograms), as for the cycle terms.
"""

import dataclasses
from typing import NamedTuple

import numpy as np

MODES = ('unconditional', 'l2t', 't2l')
SCHEDULES = ('sequential', 'random')


class Mode(NamedTuple):
  """One latentDLM mode: the static choice one train-step program is compiled for."""

  name: str


@dataclasses.dataclass(frozen=True)
class ModeSchedule:
  """loss_type: a mode or a schedule name; sequential: ((mode, steps), ...); weights: the odds of
  MODES under 'random'; seed: the run's seed (training.seed)."""

  loss_type: str
  sequential: tuple[tuple[str, int], ...] = ()
  weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
  seed: int = 0

  def __post_init__(self):
    if self.loss_type not in MODES + SCHEDULES:
      raise ValueError(f'loss.loss_type={self.loss_type!r}: expected one of {", ".join(MODES + SCHEDULES)}')
    if self.loss_type == 'sequential' and not self.sequential:
      raise ValueError("loss.loss_type='sequential' needs training.sequential_schedule")

  def terms_at(self, step: int) -> Mode:
    """The mode of step `step` (a host int, counted from 0, the reference's state.step)."""
    if self.loss_type in MODES:
      return Mode(self.loss_type)
    if self.loss_type == 'sequential':
      position = step % sum(steps for _, steps in self.sequential)
      for mode, steps in self.sequential:
        if position < steps:
          return Mode(mode)
        position -= steps
    return Mode(MODES[int(self._random_modes(np.asarray([step]))[0])])

  def _random_modes(self, steps: np.ndarray) -> np.ndarray:
    """The index in MODES that 'random' picks at each of `steps`: a uniform from splitmix64(seed, step)
    (a hash, so any step's mode costs the same and needs no generator state) against the cumulative odds."""
    x = (np.uint64(self.seed) << np.uint64(32)) + steps.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    uniform = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    bounds = np.cumsum(self.weights, dtype=np.float64) / sum(self.weights)
    # A weight of 0 gives an empty interval, never picked; the last bound is 1 (up to rounding).
    return np.minimum(np.searchsorted(bounds, uniform, side='right'), len(MODES) - 1)

  def configured_terms(self) -> Mode:
    """The mode of the first step."""
    return self.terms_at(0)

  def modes(self) -> tuple[Mode, ...]:
    """Every mode this schedule can pick, in MODES order."""
    if self.loss_type in MODES:
      return (Mode(self.loss_type),)
    if self.loss_type == 'sequential':
      named = {mode for mode, _ in self.sequential}
    else:
      named = {mode for mode, weight in zip(MODES, self.weights) if weight > 0}
    return tuple(Mode(mode) for mode in MODES if mode in named)

  def term_sets_between(self, start: int, stop: int) -> dict[Mode, int]:
    """{mode: steps in [start, stop) that train it}, in order of first use."""
    counts: dict[Mode, int] = {}
    if self.loss_type == 'random':
      picked = self._random_modes(np.arange(start, stop))
      first = {int(i): int(np.argmax(picked == i)) for i in np.unique(picked)}
      return {Mode(MODES[i]): int(np.sum(picked == i)) for i in sorted(first, key=first.get)}
    for step in range(start, stop):
      mode = self.terms_at(step)
      counts[mode] = counts.get(mode, 0) + 1
    return counts
