"""What a reference state dict says about its model: the residual layout and the model config.

The tensors fix every size the parameters have (vocabulary, hidden size, latent dim, max sequence
length, depth, cond dim, residual streams) and whether a cluster head exists. Of the attention they
show the inner width num_heads x head_dim (to_qkv's weight is [3 x inner, hidden]) but not its split
into heads: the split comes from what the user states (one of the two is enough), else the config
saved beside the weights, else the reference's fixed 8 x 64 where the inner width is 512; any other
inner width without either is an error naming the keys. The rest is not in them: dropout, the
latent diffusion settings and the value of cluster_size (the cluster head is
[vocab, hidden] whatever it is) come from what the user states, else the config the trainer saved
beside the weights, else lgdlm_jax's defaults, which are the reference's.
"""

from collections.abc import Mapping
import dataclasses
import re
from typing import Any

import ml_collections
import numpy as np

from lgdlm_jax import config as config_lib
from lgdlm_jax.convert import mapping
from lgdlm_jax.objective import diffusion

MHC = 'mhc'
PLAIN = 'plain'
LAYOUT_NAMES = {
  MHC: 'manifold-constrained hyper-connections (mmdit 0.3.0, hyper_connections.mHCv2)',
  PLAIN: 'plain residual (R = 1, any mmdit version)',
}
# (model key, tensor, axis): the tensor whose shape states the size.
_SIZE_SOURCES = (
  ('vocab_size', 'text_encoder.token_embed.weight', 0),
  ('hidden_size', 'text_encoder.token_embed.weight', 1),
  ('max_seq_len', 'text_encoder.position_embed', 1),
  ('latent_dim', 'latent_encoder.projection.0.weight', 1),
  ('cond_dim', 'conditioning.text_sigma_map.mlp.0.weight', 0),
)
_SIZE_KEYS = tuple(key for key, _, _ in _SIZE_SOURCES) + ('n_blocks', 'num_residual_streams')
ATTENTION_KEYS = ('num_heads', 'head_dim')
INFERRED_KEYS = _SIZE_KEYS + ('cluster_size',) + ATTENTION_KEYS
UNINFERABLE_KEYS = ('dropout', 'latent_timesteps', 'latent_beta_schedule', 'latent_parameterization')
CLUSTER_HEAD_KEY = 'text_head_clusters.weight'
# The reference model's own default; any positive value builds the same parameters.
_CLUSTER_SIZE_IF_UNKNOWN = 100
# Its weight is [3 x num_heads x head_dim, hidden] in every block.
QKV_KEY = 'mmdit.blocks.0.joint_attn.to_qkv.0.weight'
# The reference's mmdit never receives its config's n_heads: its attention is always this.
REFERENCE_ATTENTION = (8, 64)

_BLOCK_KEY = re.compile(r'^mmdit\.blocks\.(\d+)\.')
_RESIDUAL_KEY = re.compile(r'^mmdit\.blocks\.\d+\.(?:attn|ff)_residual_fns\.\d+\.(.+)$')
_MHC_LEAVES = frozenset(
  (
    'static_alpha',
    'dynamic_alpha_fn',
    'pre_branch_scale',
    'residual_scale',
    'static_beta',
    'dynamic_beta_fn',
    'h_post_scale',
    'norm.gamma',
  )
)
# Parameters only hyper_connections.HyperConnections has (mmdit 0.2.x's residual for R >= 2).
_HYPER_CONNECTIONS_LEAVES = frozenset(('dynamic_alpha_scale', 'dynamic_beta_scale'))


@dataclasses.dataclass(frozen=True)
class InferredConfig:
  config: ml_collections.ConfigDict  # a complete model config (default_config's model keys)
  sources: dict[str, str]  # key -> 'tensors', 'stated', 'checkpoint config' or 'default'
  layout: str  # MHC or PLAIN


def residual_layout(state_dict: Mapping[str, np.ndarray]) -> tuple[str, int]:
  """(layout, number of residual streams); ConversionError for a layout lgdlm_jax cannot run."""
  first_key: dict[str, str] = {}
  for key in state_dict:
    match = _RESIDUAL_KEY.match(key)
    if match:
      first_key.setdefault(match.group(1), key)
  if not first_key:
    return PLAIN, 1
  streams = int(state_dict[first_key['static_alpha']].shape[0]) if 'static_alpha' in first_key else None
  if _HYPER_CONNECTIONS_LEAVES & first_key.keys():
    raise mapping.ConversionError(
      f'the residual parameters ({", ".join(sorted(first_key))}) are the hyper_connections.HyperConnections '
      f'layout of mmdit 0.2.x (R={streams}), which lgdlm_jax does not implement. It mixes the streams with '
      "static + scale * tanh(RMSNorm(x) @ W) weights, used as they are; mmdit 0.3.0's manifold-constrained "
      'hyper-connections pass the same kind of logits through sigmoid, a Sinkhorn projection and '
      '2 * sigmoid, and no choice of their parameters gives the 0.2.x weights (not even at '
      'initialisation: a one-hot row is the limit of a sigmoid and identity the limit of Sinkhorn), so '
      'a conversion would change the outputs. Convert only R = 1 or mmdit 0.3.0 checkpoints.'
    )
  unknown = sorted(first_key.keys() - _MHC_LEAVES)
  if unknown or streams is None:
    raise mapping.ConversionError(
      f'unrecognised residual layout: {first_key[unknown[0]] if unknown else next(iter(first_key.values()))} '
      f"and the other residual parameters ({', '.join(sorted(first_key))}) are neither mmdit 0.3.0's "
      f"mHC ({', '.join(sorted(_MHC_LEAVES))}) nor mmdit 0.2.x's HyperConnections"
    )
  return MHC, streams


def infer_model_config(
  state_dict: Mapping[str, np.ndarray], stated: Mapping[str, Any], saved_config: Mapping[str, Any] | None = None
) -> InferredConfig:
  """The model config the tensors imply, with the `stated` values (model key -> value, user's).

  A stated value that contradicts the tensors is an error naming both. `saved_config` is the
  trainer's config saved in the checkpoint; only its `model` section's uninferable keys are read.
  """
  layout, streams = residual_layout(state_dict)
  from_tensors, evidence = _sizes_from_tensors(state_dict)
  from_tensors['num_residual_streams'] = streams
  evidence['num_residual_streams'] = f'the {LAYOUT_NAMES[layout]} parameters'
  model_config = config_lib.default_config().model
  sources: dict[str, str] = {}
  problems: list[str] = []
  for key in _SIZE_KEYS:
    value, stated_value = from_tensors.get(key), stated.get(key)
    if value is None and stated_value is None:
      problems.append(f'cannot infer {key}: {evidence[key]}; state it')
    elif value is not None and stated_value is not None and stated_value != value:
      problems.append(f'{key}: stated {stated_value}, but the tensors say {value} ({evidence[key]})')
    else:
      model_config[key] = value if value is not None else stated_value
      sources[key] = 'tensors' if value is not None else 'stated'

  saved_model = (saved_config or {}).get('model')
  saved_model = saved_model if isinstance(saved_model, Mapping) else {}
  has_head = CLUSTER_HEAD_KEY in state_dict
  head = f'{CLUSTER_HEAD_KEY} is {"present" if has_head else "absent"}'
  if stated.get('cluster_size') is not None:
    if (stated['cluster_size'] > 0) != has_head:
      problems.append(f'cluster_size: stated {stated["cluster_size"]}, but {head}')
    model_config.cluster_size, sources['cluster_size'] = stated['cluster_size'], 'stated'
  elif (saved_model.get('cluster_size') or 0) > 0 and has_head:
    model_config.cluster_size, sources['cluster_size'] = int(saved_model['cluster_size']), 'checkpoint config'
  else:
    model_config.cluster_size = _CLUSTER_SIZE_IF_UNKNOWN if has_head else 0
    sources['cluster_size'] = (
      f"{head}; its value is not stored, so the reference model's default" if has_head else 'tensors'
    )

  problems += _attention_split(state_dict, stated, saved_model, model_config, sources)
  for key in UNINFERABLE_KEYS:
    if stated.get(key) is not None:
      model_config[key], sources[key] = stated[key], 'stated'
    elif saved_model.get(key) is not None:
      model_config[key], sources[key] = type(model_config[key])(saved_model[key]), 'checkpoint config'
    else:
      sources[key] = 'default'
  for key, allowed in (
    ('latent_beta_schedule', diffusion.BETA_SCHEDULES),
    ('latent_parameterization', diffusion.PARAMETERIZATIONS),
  ):
    if model_config[key] not in allowed:
      problems.append(f'{key}={model_config[key]!r} ({sources[key]}); expected one of {allowed}')
  if problems:
    raise mapping.ConversionError(f'the model config does not fit the tensors: {mapping.problem_list(problems)}')
  config_lib.validate_section('model', model_config)
  return InferredConfig(model_config, sources, layout)


def _attention_split(
  state_dict: Mapping[str, np.ndarray],
  stated: Mapping[str, Any],
  saved_model: Mapping[str, Any],
  model_config: ml_collections.ConfigDict,
  sources: dict[str, str],
) -> list[str]:
  """Sets model_config's num_heads and head_dim (see the module doc); returns the problems."""
  heads, head_dim = stated.get('num_heads'), stated.get('head_dim')
  source = 'stated'
  if heads is None and head_dim is None and saved_model.get('num_heads') and saved_model.get('head_dim'):
    heads, head_dim, source = int(saved_model['num_heads']), int(saved_model['head_dim']), 'checkpoint config'
  shape = tuple(np.shape(state_dict[QKV_KEY])) if QKV_KEY in state_dict else None
  if shape is None or len(shape) != 2 or shape[0] % 3:
    if heads is None or head_dim is None:
      heads, head_dim = heads or REFERENCE_ATTENTION[0], head_dim or REFERENCE_ATTENTION[1]
      source = f"{QKV_KEY} is {'missing' if shape is None else f'of shape {shape}'}; the reference's"
  else:
    inner = shape[0] // 3
    width = f'{QKV_KEY} has shape {shape}: inner width num_heads x head_dim = {inner}'
    if heads is None and head_dim is None:
      if inner != REFERENCE_ATTENTION[0] * REFERENCE_ATTENTION[1]:
        return [
          f'cannot infer num_heads x head_dim: {width}, but not its split into heads; state num_heads or head_dim'
        ]
      (heads, head_dim), source = REFERENCE_ATTENTION, f"{width}, the reference's {REFERENCE_ATTENTION[0]} x 64"
    elif heads is None or head_dim is None:
      given_key, given = ('num_heads', heads) if heads is not None else ('head_dim', head_dim)
      if inner % given:
        return [f'{given_key}: {source} {given} does not divide the inner width ({width})']
      heads, head_dim = (given, inner // given) if heads is not None else (inner // given, given)
      source = f'{source} {given_key}, {width}'
    elif heads * head_dim != inner:
      return [f'num_heads x head_dim: {source} {heads} x {head_dim}, but {width}']
    else:
      source = f'{source}; {width}'
  model_config.num_heads, model_config.head_dim = heads, head_dim
  sources['num_heads'] = sources['head_dim'] = source
  return []


def _sizes_from_tensors(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, int], dict[str, str]]:
  """{model key: size} for what the tensors show, and {model key: where it was read or looked for}."""
  sizes: dict[str, int] = {}
  evidence: dict[str, str] = {}
  for key, name, axis in _SIZE_SOURCES:
    shape = np.shape(state_dict[name]) if name in state_dict else None
    if shape is not None and len(shape) > axis:
      sizes[key] = int(shape[axis])
      evidence[key] = f'{name} has shape {tuple(shape)}'
    else:
      evidence[key] = f'{name} is {"missing" if shape is None else f"of shape {tuple(shape)}"}'
  blocks = {int(m.group(1)) for m in map(_BLOCK_KEY.match, state_dict) if m}
  if blocks:
    sizes['n_blocks'] = max(blocks) + 1
    evidence['n_blocks'] = f'mmdit.blocks.{max(blocks)} is the last block'
  else:
    evidence['n_blocks'] = 'there are no mmdit.blocks.* tensors'
  return sizes, evidence
