"""Directories of converted parameters, as the converter writes them:

    DIR/params/          an Orbax checkpoint of the Flax params, in the dtype they were converted to
    DIR/config.json      the model config they fit
    DIR/converted.json   the layout version, what was converted, its step (micro-batches applied) and
                         tokenizer ids when the source said them
    DIR/optimizer/       only when the source held AdamW state: its moments {mu, nu} (float32, the
                         params' tree) and, when its tensors had different update counts, those per
                         unit (unit_updates, int32); the update count is in converted.json

Layout versions: 1 = params/ and config.json only (written before versions existed; still read);
2 = the layout above. Parameters come back as numpy arrays in their stored dtype; their shapes are
checked against the model config before any array is read.
"""

import json
import os
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lgdlm_jax import config as config_lib
from lgdlm_jax.convert import mapping
from lgdlm_jax.convert import moments as moments_lib
from lgdlm_jax.convert import update_counts

PARAMS_DIR = 'params'
INFO_FILE = 'converted.json'
OPTIMIZER_DIR = 'optimizer'
UNIT_UPDATES = 'unit_updates'
LAYOUT_VERSION = 2
# What TensorStore raises (through Orbax) for a checkpoint whose array files are truncated or missing.
_DAMAGE_ERRORS = (ValueError, OSError)


class DamagedCheckpointError(mapping.ConversionError):
  """An Orbax checkpoint's files cannot be read (truncated, emptied or missing); the message names it."""


def save(
  directory: str,
  params: Any,
  model_config: ml_collections.ConfigDict,
  info: dict[str, Any] | None = None,
  moments: moments_lib.AdamMoments | None = None,
) -> None:
  """Writes a converted directory (which must not exist yet); `info` goes into converted.json."""
  directory = os.path.abspath(directory)
  os.makedirs(directory)
  as_numpy = lambda tree: jax.tree_util.tree_map(np.asarray, tree)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, PARAMS_DIR), as_numpy(params))
    if moments is not None:
      optimizer = {'mu': moments.mu, 'nu': moments.nu}
      if moments.unit_updates is not None:
        optimizer[UNIT_UPDATES] = moments.unit_updates
      checkpointer.save(os.path.join(directory, OPTIMIZER_DIR), as_numpy(optimizer))
  with open(os.path.join(directory, config_lib.CONFIG_FILE), 'w') as f:
    f.write(model_config.to_json(indent=2))
  info = dict(info or {}, layout_version=LAYOUT_VERSION)
  if moments is not None:
    info.update(optimizer_updates=moments.updates, optimizer_hyperparameters=moments.hyperparameters)
  with open(os.path.join(directory, INFO_FILE), 'w') as f:
    json.dump(info, f, indent=2, default=str)


def is_converted(directory: str) -> bool:
  return os.path.isdir(os.path.join(directory, PARAMS_DIR))


def load_model_config(directory: str) -> ml_collections.ConfigDict:
  """The directory's model config; keys it predates (e.g. model.num_heads) take the schema's default."""
  with open(os.path.join(directory, config_lib.CONFIG_FILE)) as f:
    saved = json.load(f)
  defaults = config_lib.default_config().model.to_dict()
  return ml_collections.ConfigDict({**{k: v for k, v in defaults.items() if k not in saved}, **saved})


def load_info(directory: str) -> dict[str, Any]:
  """converted.json; a version-1 directory (without one) has only its version."""
  path = os.path.join(directory, INFO_FILE)
  if not os.path.isfile(path):
    return {'layout_version': 1}
  with open(path) as f:
    return json.load(f)


def load_params(directory: str, model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The converted params in `directory` as numpy arrays; ConversionError naming every parameter
  that does not fit `model_config` (missing, unexpected, or with both shapes)."""
  if not is_converted(directory):
    raise FileNotFoundError(f'{directory} has no {PARAMS_DIR}/: not a directory written by the converter')
  path = os.path.join(os.path.abspath(directory), PARAMS_DIR)
  stored = metadata(path)
  try:
    mapping.check_params(flax.traverse_util.flatten_dict(stored), model_config)
  except mapping.ConversionError as e:
    raise mapping.ConversionError(f'{directory}: {e}{_config_differences(directory, model_config)}') from e
  return restore_numpy(path, stored)


def load_moments(directory: str, model_config: ml_collections.ConfigDict) -> moments_lib.AdamMoments | None:
  """The AdamW moments stored beside the params, or None if the source had none."""
  path = os.path.join(os.path.abspath(directory), OPTIMIZER_DIR)
  if not os.path.isdir(path):
    return None
  stored = metadata(path)
  for name in ('mu', 'nu'):
    mapping.check_params(flax.traverse_util.flatten_dict(stored[name]), model_config)
  info = load_info(directory)
  if not isinstance(info.get('optimizer_updates'), int):
    raise mapping.ConversionError(
      f'{directory}/{INFO_FILE} does not say how many updates the moments in '
      f'{OPTIMIZER_DIR}/ have had (optimizer_updates)'
    )
  restored = restore_numpy(path, stored)
  unit_updates = restored.get(UNIT_UPDATES)
  if unit_updates is not None:
    try:
      update_counts.filled(unit_updates, restored['mu'], info['optimizer_updates'])
    except mapping.ConversionError as e:
      raise mapping.ConversionError(f'{path}: {e}') from e
  return moments_lib.AdamMoments(
    info['optimizer_updates'], restored['mu'], restored['nu'], info.get('optimizer_hyperparameters', {}), unit_updates
  )


def metadata(path: str) -> Any:
  """The tree of an Orbax checkpoint with each array's shape and dtype (nothing read)."""
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      item = checkpointer.metadata(path).item_metadata
  except _DAMAGE_ERRORS as e:
    raise _damaged(path, e) from e
  if item is None:  # what Orbax makes of a _METADATA or manifest.ocdbt that is missing, empty or cut short
    raise DamagedCheckpointError(
      f'{path}: damaged checkpoint, cannot be read (no readable metadata: its _METADATA '
      'or manifest.ocdbt is missing, empty or cut short)'
    )
  return item.tree


def restore_numpy(path: str, wanted: Any) -> Any:
  """The arrays of the Orbax checkpoint at `path` that `wanted` (its metadata tree, or a part of it
  with None for what is not wanted) names, as numpy arrays in their stored dtype."""
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      return checkpointer.restore(
        path,
        args=ocp.args.PyTreeRestore(
          item=jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted),
          restore_args=jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted),
          partial_restore=True,
        ),
      )
  except _DAMAGE_ERRORS as e:
    raise _damaged(path, e) from e


def _damaged(path: str, error: Exception) -> DamagedCheckpointError:
  reason = ' '.join(str(error).split()[:40]) or type(error).__name__
  return DamagedCheckpointError(f'{path}: damaged checkpoint, cannot be read ({type(error).__name__}: {reason})')


def _config_differences(directory: str, model_config: ml_collections.ConfigDict) -> str:
  """A hint naming the keys on which the directory's config.json and `model_config` differ."""
  try:
    saved = load_model_config(directory)
  except (OSError, ValueError):
    return ''
  differing = [
    f'{k} ({saved[k]} there, {model_config[k]} here)'
    for k in saved
    if k in model_config and saved[k] != model_config[k]
  ]
  if not differing:
    return ''
  return f'; {directory}/{config_lib.CONFIG_FILE} differs from the model config in: {", ".join(differing)}'
