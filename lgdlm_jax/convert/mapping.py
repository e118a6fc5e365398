"""The mapping between the reference's PyTorch state-dict names and lgdlm_jax's Flax parameters.

The rule is mechanical, so it runs both ways:
- a numeric index is joined to the module name before it: `latent_encoder.projection.0` ->
  `latent_encoder/projection_0`, `feedforwards.1.ff.0.0` -> `feedforwards_1/ff_0_0`;
- `mmdit.blocks.{i}.X` -> `mmdit/blocks/X` stacked along a leading block axis (the blocks are scanned);
- leaves: a 2-D Linear `weight` [out, in] -> `kernel` [in, out]; a 1-D (LayerNorm) `weight` ->
  `scale`; `token_embed.weight` -> `embedding`; `bias` and raw parameters keep name and shape.
Both directions check the result against the parameter shapes the model config implies and raise
ConversionError listing every missing, unexpected and mismatched name with both shapes.
torch_param_shapes gives the same expectation in the reference's terms, for checks before mapping;
reference_parameter_order the order of the reference model's parameters, which is the order of the
parameter indices in its optimizer state.
"""

from collections.abc import Mapping
import functools
import json
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lgdlm_jax import errors
from lgdlm_jax import model as model_lib
from lgdlm_jax.model import units

_MERGED_INDEX = re.compile(r'_(\d+)')
# Problems named in one error line; the rest are counted.
_MAX_NAMED_PROBLEMS = 8
# The order in which the reference registers the modules and parameters that share a parent. PyTorch
# lists a module's own parameters before its children's, in registration order, so position_embed
# (a parameter of the encoders) precedes token_embed and projection (their sub-modules).
_REGISTRATION_ORDER = (
  'text_encoder',
  'latent_encoder',
  'conditioning',
  'mmdit',
  'text_head',
  'latent_head',
  'text_head_clusters',
  'position_embed',
  'token_embed',
  'projection',
  'text_sigma_map',
  'latent_sigma_map',
  'combine',
  'mlp',
  'blocks',
  'norms',
  'attn_residual_fns',
  'ff_residual_fns',
  'to_post_branch_gammas',
  'attn_layernorms',
  'joint_attn',
  'ff_layernorms',
  'feedforwards',
  'static_alpha',
  'dynamic_alpha_fn',
  'pre_branch_scale',
  'residual_scale',
  'static_beta',
  'dynamic_beta_fn',
  'h_post_scale',
  'norm',
  'gamma',
  'to_cond',
  'to_qkv',
  'to_out',
  'ff',
  'weight',
  'bias',
  'g',
)
_REGISTRATION_RANK = {name: rank for rank, name in enumerate(_REGISTRATION_ORDER)}


class ConversionError(errors.InputError):
  """A state dict does not fit the model config; the message lists the problems on one line."""


def problem_list(problems: list[str]) -> str:
  """Problems joined on one line, the first few named and the rest counted."""
  named = '; '.join(problems[:_MAX_NAMED_PROBLEMS])
  rest = len(problems) - _MAX_NAMED_PROBLEMS
  return named + (f'; and {rest} more' if rest > 0 else '')


# Top-level Flax modules the reference model has no counterpart of.
NO_REFERENCE_COUNTERPART = ('length_head',)


def param_shapes(model_config: ml_collections.ConfigDict) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {flax path: shape} of the parameters a model config implies, without allocating them."""
  return dict(_param_shapes(json.dumps(model_config.to_dict(), sort_keys=True)))


@functools.lru_cache(maxsize=8)
def _param_shapes(model_config_json: str) -> dict[tuple[str, ...], tuple[int, ...]]:
  # Cached by config: tracing the model's init takes seconds, and one conversion asks several times.
  model_config = ml_collections.ConfigDict(json.loads(model_config_json))
  model = model_lib.MultimodalMMDiT(model_config)
  tokens = jnp.zeros((1, 1), jnp.int32)
  latents = jnp.zeros((1, model_config.latent_dim), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, latents)['params'])
  return {path: tuple(leaf.shape) for path, leaf in flax.traverse_util.flatten_dict(shapes).items()}


def has_reference_counterpart(path: tuple[str, ...]) -> bool:
  """False for the parameters the reference model lacks (model.length_head's): exports drop them."""
  return path[0] not in NO_REFERENCE_COUNTERPART


def torch_param_shapes(model_config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """{reference state-dict name: torch shape} of the parameters a model config implies that the
  reference model has."""
  shapes = {}
  for path, flax_shape in filter(lambda item: has_reference_counterpart(item[0]), param_shapes(model_config).items()):
    blocks = range(flax_shape[0]) if units.is_block_parameter(path) else (None,)
    shapes.update({torch_key(path, i): _torch_shape(path, flax_shape) for i in blocks})
  return shapes


def reference_parameter_order(model_config: ml_collections.ConfigDict) -> list[str]:
  """The reference model's parameter names in the order of its `parameters()`: the order of its
  state dict and of the parameter indices in its optimizer's state."""

  def rank(name: str) -> tuple[int, ...]:
    try:
      return tuple(int(part) if part.isdigit() else _REGISTRATION_RANK[part] for part in name.split('.'))
    except KeyError as e:
      raise ConversionError(f'{name}: no known position in the reference model ({e} is not a module name of it)') from e

  return sorted(torch_param_shapes(model_config), key=rank)


def check_params(flat_params: Mapping[tuple[str, ...], Any], model_config: ml_collections.ConfigDict) -> None:
  """Raises ConversionError naming every path of flat Flax params (anything with .shape) that does
  not fit the model config: missing, unexpected, or mismatched with both shapes."""
  problems = _compare(flat_params, param_shapes(model_config), describe=lambda p, s: f'{"/".join(p)} {s}')
  if problems:
    raise ConversionError(f'params do not fit the model config: {problem_list(problems)}')


def _merge_indices(segments: list[str]) -> list[str]:
  merged: list[str] = []
  for segment in segments:
    if segment.isdigit() and merged:
      merged[-1] = f'{merged[-1]}_{segment}'
    else:
      merged.append(segment)
  return merged


def _torch_leaf_to_flax(module_path: list[str], leaf: str, array: np.ndarray) -> tuple[str, np.ndarray]:
  if leaf != 'weight':
    return leaf, array
  if module_path and module_path[-1] == 'token_embed':
    return 'embedding', array
  if array.ndim == 1:
    return 'scale', array
  if array.ndim == 2:
    return 'kernel', array.T
  return leaf, array


def torch_to_flax(state_dict: Mapping[str, Any], model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Reference state dict (name -> numpy array or tensor) -> nested Flax params dict of numpy arrays.

  Keys must already be free of wrapper prefixes (`module.`, `model.`, `_orig_mod.`). Arrays keep
  their dtype.
  """
  expected = param_shapes(model_config)
  n_blocks = model_config.n_blocks
  flat: dict[tuple[str, ...], np.ndarray] = {}
  per_block: dict[tuple[str, ...], dict[int, np.ndarray]] = {}
  problems: list[str] = []
  for key, value in state_dict.items():
    array = np.asarray(value)
    segments = key.split('.')
    block = None
    if units.is_block_parameter(segments) and len(segments) > 2 and segments[2].isdigit():
      block = int(segments[2])
      segments = segments[:2] + segments[3:]
    module_path = _merge_indices(segments[:-1])
    leaf, array = _torch_leaf_to_flax(module_path, segments[-1], array)
    path = tuple(module_path) + (leaf,)
    if block is None:
      flat[path] = array
    elif block >= n_blocks:
      problems.append(f'unexpected key {key}: block {block} but model.n_blocks={n_blocks}')
    else:
      per_block.setdefault(path, {})[block] = array
  for path, arrays in per_block.items():
    missing_blocks = sorted(set(range(n_blocks)) - set(arrays))
    if missing_blocks:
      problems.append(f'missing key {torch_key(path, missing_blocks[0])} (blocks {missing_blocks} of that parameter)')
      continue
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) > 1:
      problems.append(f'the blocks of {torch_key(path)} differ in shape: {sorted(shapes)}')
      continue
    flat[path] = np.stack([arrays[i] for i in range(n_blocks)])
  problems += _compare(flat, expected, describe=_describe_torch)
  if problems:
    raise ConversionError(f'state dict does not fit the model config: {problem_list(problems)}')
  return flax.traverse_util.unflatten_dict(flat)


def flax_to_torch(params: Mapping[str, Any], model_config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Flax params -> the reference's state dict (name -> numpy array), the inverse of torch_to_flax.

  Parameters the reference lacks (`has_reference_counterpart`) are left out.
  """
  flat = {path: np.asarray(v) for path, v in flax.traverse_util.flatten_dict(dict(params)).items()}
  check_params(flat, model_config)
  state_dict: dict[str, np.ndarray] = {}
  for path, array in filter(lambda item: has_reference_counterpart(item[0]), flat.items()):
    if units.is_block_parameter(path):
      for i in range(array.shape[0]):
        state_dict[torch_key(path, i)] = _flax_leaf_to_torch(path[-1], array[i])
    else:
      state_dict[torch_key(path)] = _flax_leaf_to_torch(path[-1], array)
  return state_dict


def _flax_leaf_to_torch(leaf: str, array: np.ndarray) -> np.ndarray:
  # np.array, not np.ascontiguousarray: the latter turns 0-d parameters (h_post_scale) into 1-d.
  return np.array(array.T if leaf == 'kernel' else array, order='C')


def torch_key(path: tuple[str, ...], block: int | str | None = None) -> str:
  """The reference's name of a Flax parameter path; `block` fills the block index of scanned ones."""
  leaf = 'weight' if path[-1] in ('kernel', 'scale', 'embedding') else path[-1]
  modules = [_MERGED_INDEX.sub(r'.\1', m) for m in path[:-1]]
  if units.is_block_parameter(path):
    modules = modules[:2] + [str('*' if block is None else block)] + modules[2:]
  return '.'.join(modules + [leaf])


def _torch_shape(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a Flax parameter (per block for the stacked ones)."""
  shape = flax_shape[1:] if units.is_block_parameter(path) else flax_shape
  return tuple(shape[::-1] if path[-1] == 'kernel' else shape)


def _describe_torch(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> str:
  """A parameter in the reference's terms: its state-dict name and torch shape (per block)."""
  return f'{torch_key(path)} {_torch_shape(path, flax_shape)}'


def _compare(
  flat: Mapping[tuple[str, ...], np.ndarray], expected: Mapping[tuple[str, ...], tuple[int, ...]], describe
) -> list[str]:
  """Every missing, unexpected and mismatched parameter, described with its shape(s)."""
  problems = [f'missing key {describe(p, expected[p])}' for p in expected if p not in flat]
  problems += [f'unexpected key {describe(p, flat[p].shape)}' for p in flat if p not in expected]
  problems += [
    f'shape mismatch: got {describe(p, flat[p].shape)}, the model config expects {describe(p, expected[p])}'
    for p in flat
    if p in expected and flat[p].shape != expected[p]
  ]
  return problems
