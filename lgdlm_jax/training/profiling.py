"""A jax.profiler trace of the micro-batch steps training.profile_steps = (start, stop), written by process 0.

The trace goes to WORKDIR/tensorboard/plugins/profile/<time>/, where TensorBoard's profile plugin
finds it (`tensorboard --logdir WORKDIR/tensorboard`, Profile tab; needs the tensorboard-plugin-profile
package). Each step is annotated with its number, so the plugin's step view separates them. The
trace stops after the device has finished step stop - 1, so it holds that step's work too.
"""

import contextlib
import os
from typing import Any

from absl import logging
import jax
import ml_collections

from lgdlm_jax.training import metrics_log


class StepProfiler:
  """Starts the trace before step `start` (or the first step of a run resumed inside the range) and
  stops it after step stop - 1."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    start, stop = config.training.profile_steps
    self._steps = range(start, stop) if jax.process_index() == 0 else range(0)
    self.trace_dir = os.path.join(workdir, metrics_log.TENSORBOARD_DIR)
    self._tracing = False

  def step(self, step: int) -> contextlib.AbstractContextManager:
    """A context for dispatching `step`: starts the trace when `step` is the first one to profile."""
    if step not in self._steps:
      return contextlib.nullcontext()
    if not self._tracing:
      logging.info('Profiling steps %d to %d into %s', step, self._steps.stop - 1, self.trace_dir)
      jax.profiler.start_trace(self.trace_dir)
      self._tracing = True
    return jax.profiler.StepTraceAnnotation('train', step_num=step)

  def after(self, step: int, state: Any) -> None:
    """Call after dispatching `step`: ends the trace, once the device is done, after the last step."""
    if self._tracing and step == self._steps.stop - 1:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
