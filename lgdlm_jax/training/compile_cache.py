"""The persistent XLA compilation cache: a relaunched run loads its compiled steps instead of compiling.

JAX keys each entry by the program, the backend and the compile options, so one directory can serve
several runs and configs; entries that no longer match are simply not used.
"""

import os

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache
import ml_collections

CACHE_DIR = 'compilation_cache'  # under the workdir, unless training.compilation_cache_dir says otherwise


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """Where the cache lives for this run, or None when training.compilation_cache is off."""
  if not config.training.compilation_cache:
    return None
  return os.path.abspath(config.training.compilation_cache_dir or os.path.join(workdir, CACHE_DIR))


def use(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Points JAX's persistent cache at this run's directory (or switches it off), before any compile.

  Off for runs of several CPU processes: JAX writes entries from process 0 only, and CPU processes
  key the same program differently, so on a relaunch process 0 alone would skip compiling and
  reach the first collective long before the others, and the CPU collectives (gloo) give up after
  waiting 30 s.
  """
  path = cache_dir(config, workdir)
  if path is not None and jax.process_count() > 1 and jax.default_backend() == 'cpu':
    logging.warning(
      'Compilation cache off: this run has %d CPU processes, of which only process 0 would '
      'load its compiled steps from the cache',
      jax.process_count(),
    )
    path = None
  # The cache is set up once per process on first use: reset it so that a second run in the same
  # process (tests, notebooks) uses its own directory.
  compilation_cache.reset_cache()
  jax.config.update('jax_enable_compilation_cache', path is not None)
  if path is None:
    return
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  # Cache every program: the small ones add up too (a train step, two eval steps, the samplers).
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  logging.info('Compilation cache: %s', path)
