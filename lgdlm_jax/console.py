"""What a run prints: lgdlm_jax's own log lines without the libraries' INFO chatter, and the progress.

- `configure_logging(verbose)`: lgdlm_jax's INFO lines (start-up, resume, evaluation) and everyone's
  warnings and errors are shown, in a short format; the INFO lines of the libraries (Orbax writes
  about 50 per checkpoint, grain and JAX a few each) only with `verbose` (`--verbose` on every entry
  point), which also restores absl's full format.
- `Progress`: on a terminal a tqdm bar (steps/s, the loss, non-padding tokens/s and the share of
  padding) that starts after the first step, so
  that the compilation is not in its rate or ETA, and that log lines are written above, never across;
  when stdout is not a terminal (`> log.txt`), one short line per logged step instead.
"""

import logging as python_logging
import os
import sys
import time
from typing import TextIO

from absl import logging
import tqdm

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _OwnInfoOnly(python_logging.Filter):
  """Passes warnings and errors from anyone, and INFO lines only from lgdlm_jax's own modules."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)


class _ShortFormatter(python_logging.Formatter):
  """'12:03:04 message', with the level named only when it is a warning or worse."""

  def format(self, record: python_logging.LogRecord) -> str:
    level = '' if record.levelno < python_logging.WARNING else f'{record.levelname}: '
    return f'{time.strftime("%H:%M:%S", time.localtime(record.created))} {level}{record.getMessage()}'


def configure_logging(verbose: bool) -> None:
  """Routes Python and absl logging through absl's handler on stderr, as described in the module doc."""
  logging.use_absl_handler()
  handler = logging.get_absl_handler()
  for old in [f for f in handler.filters if isinstance(f, _OwnInfoOnly)]:
    handler.removeFilter(old)  # entry points may run several times in one process (tests)
  logging.set_verbosity(logging.INFO)
  if verbose:
    handler.setFormatter(logging.PythonFormatter())
  else:
    handler.addFilter(_OwnInfoOnly())
    handler.setFormatter(_ShortFormatter())


class _AboveTheBar:
  """A stream for the log handler while a bar is drawn: each line goes out through tqdm.write."""

  def __init__(self, stream: TextIO):
    self._stream = stream

  def write(self, text: str) -> None:
    for line in text.rstrip('\n').split('\n'):
      tqdm.tqdm.write(line, file=self._stream)

  def flush(self) -> None:
    self._stream.flush()


class Progress:
  """Training progress from `start` to `total` steps, shown by one process (`show`)."""

  def __init__(self, start: int, total: int, show: bool = True):
    self._start, self._total = start, total
    self._bar_wanted = show and sys.stderr.isatty()
    # Step lines unless both streams are terminals (where the bar says it all).
    self._lines = show and not (sys.stdout.isatty() and sys.stderr.isatty())
    self._bar: tqdm.tqdm | None = None
    self._first_done: tuple[int, float] | None = None  # (step, time) the rate is counted from
    self._real_tokens = 0  # non-padding tokens of the steps after the first
    self._saved_stream: TextIO | None = None

  def update(self, done: int, real_tokens: int = 0) -> None:
    """After step `done` (1-based), of `real_tokens` non-padding tokens, was dispatched; the first
    call starts the clock and the bar."""
    if self._first_done is None:
      self._first_done = (done, time.perf_counter())
      if self._bar_wanted:
        self._bar = tqdm.tqdm(
          total=self._total,
          initial=done,
          unit=' steps',
          dynamic_ncols=True,
          bar_format='{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]',
        )
        self._redirect_logs()
      return
    self._real_tokens += real_tokens
    if self._bar is not None:
      self._bar.update(done - self._bar.n)

  def logged(self, step: int, loss: float, padding_fraction: float | None = None) -> None:
    """At each logged step: the loss, the non-padding tokens/s since the first step and the share of
    padding in step `step`'s batch, in the bar or as one line on stdout."""
    real = self.real_tokens_per_second()
    speed = '' if real is None else f', {real:.0f} real tokens/s'
    padding = '' if padding_fraction is None else f', {padding_fraction:.0%} padding'
    if self._bar is not None:
      self._bar.set_postfix_str(f'loss {loss:.4f}{speed}{padding}', refresh=False)
    if self._lines:
      rate = self.steps_per_second(step)
      steps = '' if rate is None else f', {rate:.2f} steps/s'
      print(f'step {step}/{self._total}: loss {loss:.4f}{steps}{speed}{padding}', flush=True)

  def steps_per_second(self, step: int) -> float | None:
    if self._first_done is None or step <= self._first_done[0]:
      return None
    return (step - self._first_done[0]) / self._seconds()

  def real_tokens_per_second(self) -> float | None:
    """Non-padding tokens per second of the steps dispatched after the first (None before any)."""
    if self._first_done is None or not self._real_tokens:
      return None
    return self._real_tokens / self._seconds()

  def _seconds(self) -> float:
    return max(time.perf_counter() - self._first_done[1], 1e-9)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._saved_stream is not None:
      logging.get_absl_handler().python_handler.stream = self._saved_stream
      self._saved_stream = None

  def _redirect_logs(self) -> None:
    python_handler = logging.get_absl_handler().python_handler
    self._saved_stream = python_handler.stream
    python_handler.stream = _AboveTheBar(self._saved_stream)
