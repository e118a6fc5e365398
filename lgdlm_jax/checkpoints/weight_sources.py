"""One reader for every place weights come from: a converted directory, a training workdir, or a
PyTorch checkpoint (any of the reference's layouts, read safely). `init_from`, `python -m
lgdlm_jax.sample` and `--to-torch` all start from `read`.
"""

import os
from typing import Any

import ml_collections

from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.convert import converted
from lgdlm_jax.convert import files
from lgdlm_jax.convert import layout
from lgdlm_jax.convert import mapping
from lgdlm_jax.convert import moments as moments_lib
from lgdlm_jax.convert.weights import Weights

CONVERTED = 'converted directory'
WORKDIR = 'training workdir'
TORCH = 'PyTorch checkpoint'
# Tokenizer ids a source may state (the reference's cfg has them; a converted directory keeps them).
TOKENIZER_KEYS = ('vocab_size', 'mask_token_id', 'pad_token_id')


def kind(path: str) -> str:
  """CONVERTED, WORKDIR or TORCH (anything else: the reference's files), from the layout alone."""
  if converted.is_converted(path):
    return CONVERTED
  return WORKDIR if workdirs.is_workdir(path) else TORCH


def read(
  path: str,
  *,
  model_config: ml_collections.ConfigDict | None = None,
  step: int | None = None,
  with_moments: bool = False,
  unsafe_pickle: bool = False,
  params_tree: str = 'params',
) -> Weights:
  """The weights at `path`, checked against `model_config` when given (else the source's own).

  `params_tree` 'ema_params' reads a training workdir's moving average (the other sources hold one
  set of weights).
  `step` picks a training workdir's checkpoint or a cycle-trainer run directory's step_N.pt;
  `with_moments` also reads the AdamW moments, and is an error for a source that has none.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist')
  source_kind = kind(path)
  if params_tree != 'params' and source_kind != WORKDIR:
    raise mapping.ConversionError(f'{path} is a {source_kind}: only a {WORKDIR} holds {params_tree}')
  if source_kind == CONVERTED:
    return _read_converted(path, model_config, step, with_moments)
  if source_kind == WORKDIR:
    config = workdirs.load_config(path)
    checkpoint = workdirs.read(path, model_config or config.model, step, with_moments, params_tree)
    tokenizer = {k: config.tokenizer[k] for k in TOKENIZER_KEYS}
    what = '' if params_tree == 'params' else f' ({params_tree})'
    return Weights(
      path,
      WORKDIR,
      f'{WORKDIR} {path}, step {checkpoint.step}{what}',
      config.model,
      checkpoint.params,
      checkpoint.steps_done,
      checkpoint.moments,
      config,
      tokenizer,
    )
  return _read_torch(path, model_config, step, with_moments, unsafe_pickle)


def _read_converted(
  path: str, model_config: ml_collections.ConfigDict | None, step: int | None, with_moments: bool
) -> Weights:
  if step is not None:
    raise mapping.ConversionError(
      f'--step {step} picks a checkpoint of a training workdir; the {CONVERTED} {path} holds one set of weights'
    )
  model_config = model_config or converted.load_model_config(path)
  info = converted.load_info(path)
  moments = converted.load_moments(path, model_config) if with_moments else None
  if with_moments and moments is None:
    raise mapping.ConversionError(f'the {CONVERTED} {path} holds no optimizer state (its source had none)')
  return Weights(
    path,
    CONVERTED,
    f'{CONVERTED} {path}',
    model_config,
    converted.load_params(path, model_config),
    info.get('steps_done'),
    moments,
    None,
    dict(info.get('tokenizer') or {}),
  )


def _read_torch(
  path: str, model_config: ml_collections.ConfigDict | None, step: int | None, with_moments: bool, unsafe_pickle: bool
) -> Weights:
  checkpoint = files.read_checkpoint(path, unsafe_pickle, step)
  layout.residual_layout(checkpoint.state_dict)  # names the layouts lgdlm_jax cannot run
  if model_config is None:
    model_config = layout.infer_model_config(checkpoint.state_dict, {}, checkpoint.saved_config).config
  params = mapping.torch_to_flax(checkpoint.state_dict, model_config)
  moments = None
  if with_moments:
    if checkpoint.optimizer_state is None:
      raise mapping.ConversionError(f'{checkpoint.path} holds no {files.OPTIMIZER_KEY}')
    moments = moments_lib.from_torch(checkpoint.optimizer_state, checkpoint.state_dict, model_config)
  return Weights(
    path,
    TORCH,
    f'{TORCH} {checkpoint.path} ({checkpoint.chosen})',
    model_config,
    params,
    checkpoint.steps_done,
    moments,
    None,
    tokenizer_ids(checkpoint.saved_config),
  )


def tokenizer_ids(saved_config: dict[str, Any] | None) -> dict[str, int]:
  """The tokenizer ids in a reference trainer's saved config (its `tokenizer` section), if any."""
  section = (saved_config or {}).get('tokenizer')
  if not isinstance(section, dict):
    return {}
  return {k: section[k] for k in TOKENIZER_KEYS if isinstance(section.get(k), int) and not isinstance(section[k], bool)}
