"""Directories of converted parameters, as convert_torch_weights.py writes them:

    DIR/params/       an Orbax checkpoint of the Flax params, in the dtype they were converted to
    DIR/config.json   the model config they fit

`load_params(DIR, config.model)` is how training starts from converted weights. Parameters come
back as numpy arrays in their stored dtype; their shapes are checked against the model config
before any array is read.
"""

import json
import os
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lgdlm_jax import convert

PARAMS_DIR = 'params'
CONFIG_FILE = 'config.json'


def save(directory: str, params: Any, model_config: ml_collections.ConfigDict) -> None:
  """Writes params and their model config into `directory`, which must not exist yet."""
  directory = os.path.abspath(directory)
  os.makedirs(directory)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, PARAMS_DIR), jax.tree_util.tree_map(np.asarray, params))
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    f.write(model_config.to_json(indent=2))


def is_converted(directory: str) -> bool:
  return os.path.isdir(os.path.join(directory, PARAMS_DIR))


def load_model_config(directory: str) -> ml_collections.ConfigDict:
  with open(os.path.join(directory, CONFIG_FILE)) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_params(directory: str, model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The converted params in `directory` as numpy arrays; ConversionError naming every parameter
  that does not fit `model_config` (missing, unexpected, or with both shapes)."""
  if not is_converted(directory):
    raise FileNotFoundError(f'{directory} has no {PARAMS_DIR}/: not a directory written by convert_torch_weights.py')
  try:
    return restore_params(os.path.join(os.path.abspath(directory), PARAMS_DIR), model_config)
  except convert.ConversionError as e:
    raise convert.ConversionError(f'{directory}: {e}{_config_differences(directory, model_config)}') from e


def restore_params(path: str, model_config: ml_collections.ConfigDict, subtree: str | None = None) -> dict[str, Any]:
  """Params from the Orbax checkpoint at `path` (or its top-level `subtree`, read alone) as numpy,
  after checking their stored shapes against the model config."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    stored = checkpointer.metadata(path).item_metadata.tree
    if subtree is not None:
      stored = {subtree: stored[subtree]}
    convert.check_params(flax.traverse_util.flatten_dict(stored[subtree] if subtree else stored), model_config)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored),
        restore_args=jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored),
        partial_restore=subtree is not None))
  return restored[subtree] if subtree else restored


def _config_differences(directory: str, model_config: ml_collections.ConfigDict) -> str:
  """A hint naming the keys on which the directory's config.json and `model_config` differ."""
  try:
    saved = load_model_config(directory)
  except (OSError, ValueError):
    return ''
  differing = [f'{k} ({saved[k]} there, {model_config[k]} here)' for k in saved
               if k in model_config and saved[k] != model_config[k]]
  return f'\n{directory}/{CONFIG_FILE} differs from the model config in: {", ".join(differing)}' if differing else ''
