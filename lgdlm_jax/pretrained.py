"""The config and parameters of a training workdir (config.json, checkpoints/<step>/state)."""

import os
from typing import Any

import ml_collections

from lgdlm_jax import checkpoint
from lgdlm_jax import config as config_lib
from lgdlm_jax import converted


def load_config(workdir: str) -> ml_collections.FrozenConfigDict:
  """The full config the run wrote to WORKDIR/config.json (keys it predates take the schema's default)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{workdir} has no config.json: not a training workdir')
  with open(path) as f:
    return config_lib.from_json(f.read(), source=path)


def load_params(workdir: str, config: ml_collections.ConfigDict, step: int | None = None,
                tree: str = 'params') -> tuple[Any, int]:
  """(params as numpy, step) of the checkpoint at `step`, the newest by default; the optimizer
  state is not read. tree: 'params', or 'ema_params' for the moving average (lgdlm_jax.ema)."""
  root = os.path.join(os.path.abspath(workdir), checkpoint.CHECKPOINTS_DIR)
  steps = sorted(int(name) for name in os.listdir(root) if name.isdigit()) if os.path.isdir(root) else []
  if not steps:
    raise FileNotFoundError(f'{workdir} has no checkpoints under {checkpoint.CHECKPOINTS_DIR}/')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f'{workdir} has no checkpoint at step {step}; it has steps {steps}')
  state_path = os.path.join(root, str(step), checkpoint.STATE_ITEM)
  return converted.restore_params(state_path, config.model, subtree=tree), step
