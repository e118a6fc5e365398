"""Weights & Biases, one of the run log's sinks (lgdlm_jax.training.metrics_log): logging.wandb_*.

    check(config)                              # every process, before any work: the package is there
    sink = wandb_sink(workdir, config, resumed=...)   # process 0; None when W&B is off

W&B is on when logging.wandb_project is set and logging.wandb_mode is not 'disabled'; only then is
`wandb` imported (the `tracking` extra). The sink gets the records the jsonl gets, at their step,
and the config once. The run's W&B id is kept in WORKDIR/wandb_run_id, so that a resumed run
continues the same W&B run. 'offline' writes the W&B run under WANDB_DIR (else the workdir) with no
network; `wandb sync` uploads it later.
"""

import os
import secrets
from typing import Any

from absl import logging
import ml_collections

from lgdlm_jax.errors import ConfigError

RUN_ID_FILE = 'wandb_run_id'


def wandb_on(config: ml_collections.ConfigDict) -> bool:
  return bool(config.logging.wandb_project) and config.logging.wandb_mode != 'disabled'


def check(config: ml_collections.ConfigDict) -> None:
  """A ConfigError naming the key and the extra when W&B is on and the package is missing."""
  logs = config.logging
  if logs.wandb_project and logs.wandb_mode == 'disabled':
    logging.info("logging.wandb_mode='disabled': nothing is sent to the W&B project %r", logs.wandb_project)
  if not wandb_on(config):
    return
  try:
    import wandb  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import  (an optional extra)
  except ImportError as e:
    raise ConfigError(
      f'logging.wandb_project={logs.wandb_project!r} needs the wandb package, the tracking extra: '
      "python3 -m pip install -e '.[tracking]' (or set logging.wandb_mode='disabled')"
    ) from e


def _run_id(workdir: str, resumed: bool) -> tuple[str, bool]:
  """(the W&B run id, whether it continues the workdir's earlier W&B run)."""
  path = os.path.join(workdir, RUN_ID_FILE)
  if resumed and os.path.exists(path):
    with open(path) as f:
      stored = f.read().strip()
    if stored:
      return stored, True
  run_id = secrets.token_hex(4)  # W&B's own ids are 8 characters of [a-z0-9] too
  with open(path, 'w') as f:
    f.write(run_id + '\n')
  return run_id, False


class WandbSink:
  """Logs every record to one W&B run (see the module docstring)."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, resumed: bool):
    import wandb  # pylint: disable=g-import-not-at-top  (an optional extra)

    logs = config.logging
    run_id, continued = _run_id(workdir, resumed)
    self._run = wandb.init(
      project=logs.wandb_project,
      entity=logs.wandb_entity or None,
      name=logs.wandb_run_name or os.path.basename(os.path.abspath(workdir)),
      mode=logs.wandb_mode,
      id=run_id,
      resume='allow',
      # Given each time: wandb reads WANDB_DIR once per process, at its first run.
      dir=os.environ.get('WANDB_DIR') or workdir,
    )
    # On resume the config may differ in the keys a resume may change; W&B shows this session's.
    self._run.config.update(config.to_dict(), allow_val_change=True)
    logging.info(
      'W&B: %s run %s in project %r (%s; id in %s)',
      'continuing' if continued else 'new',
      run_id,
      logs.wandb_project,
      logs.wandb_mode,
      os.path.join(workdir, RUN_ID_FILE),
    )

  def write(self, step: int, record: dict[str, Any]) -> None:
    # W&B ignores, with a warning of its own, steps below the newest it has: after a resume those
    # are the steps the killed run logged past its checkpoint, computed again from the same state and data.
    self._run.log(record, step=step)

  def close(self) -> None:
    self._run.finish()


def wandb_sink(workdir: str, config: ml_collections.ConfigDict, resumed: bool) -> WandbSink | None:
  return WandbSink(workdir, config, resumed) if wandb_on(config) else None
