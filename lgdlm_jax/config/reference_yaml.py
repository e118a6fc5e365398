"""Reads the reference's YAML configs (cycle_vae_impl/configs/*.yaml) into our config schema.

A convenience on top of the Python configs: the result starts from
lgdlm_jax.config_lib.default_config(), and every reference key either lands on one of our keys or is reported as ignored;
none is dropped silently. `overrides` are the reference's `--override a.b=c` strings, values read
with yaml.safe_load. They may name reference keys (applied to the YAML before mapping, so
`training.dtype=bf16` works as in the reference) or keys that only our schema has
(`model.remat_policy=full`); anything else is an error.
"""

from collections.abc import Callable, Iterable
import os
from typing import Any

from absl import logging
import ml_collections
import yaml

from lgdlm_jax import config as config_lib

# Reference keys read unchanged into the same key of ours.
_SAME_KEYS = (
    'data.token_dir', 'data.latent_dir', 'data.data_dir', 'data.val_ratio',
    'model.hidden_size', 'model.n_blocks', 'model.cond_dim', 'model.max_seq_len',
    'model.dropout', 'model.num_residual_streams', 'model.latent_dim', 'model.cluster_size',
    'model.latent_timesteps', 'model.latent_beta_schedule', 'model.latent_parameterization',
    'training.seed', 'training.train_batch_size', 'training.eval_batch_size',
    'training.num_train_steps', 'training.gradient_accumulation_steps',
    'training.lr_schedule', 'training.warmup_steps',
    'loss.latent_loss_weight', 'loss.latent_t_mode', 'loss.cycle_text_weight',
    'loss.cycle_text_warmup_steps', 'loss.cycle_text_ramp_steps', 'loss.cycle_latent_weight',
    'loss.cycle_latent_warmup_steps', 'loss.cycle_latent_ramp_steps',
    'loss.cycle_latent_sampling', 'loss.cycle_latent_t_min', 'loss.cycle_latent_t_max',
    'loss.cycle_stop_grad_latent',
    'optimizer.name', 'optimizer.lr', 'optimizer.weight_decay', 'optimizer.beta1',
    'optimizer.beta2', 'optimizer.eps', 'optimizer.grad_clip_norm',
    'tokenizer.mask_token_id', 'tokenizer.pad_token_id',
)
# Reference keys that move to a differently named key of ours.
_RENAMED_KEYS = {
    'logging.log_every': 'training.log_every',
    'logging.save_every': 'training.save_every',
}
# Keys the reference reads or ships that have no effect here (n_heads and qk_rmsnorm have none
# in the reference either). Listed so that `--override` on them is accepted; still reported.
_UNUSED_KEYS = frozenset((
    'data.data_files.train', 'data.data_files.validation', 'data.load_tokens',
    'data.use_preprocessed', 'data.max_val_samples', 'data.num_workers',
    'data.initial_scan_limit', 'data.split',
    'model.type', 'model.n_heads', 'model.qk_rmsnorm', 'model.use_multimodal',
    'model.use_stub_if_no_mmdit', 'model.diffusion_process', 'model.latent_diffusion_process',
    'model.latent_beta_min', 'model.latent_beta_max',
    'logging.run_name', 'logging.log_dir',
    'tokenizer.path', 'tokenizer.local_files_only',
))
# Where the reference's own default for an ABSENT key differs from default_config's value.
_REFERENCE_DEFAULTS = {'optimizer.beta2': 0.999, 'optimizer.weight_decay': 0.0}
# parse_dtype spellings we support; fp16 / fp64 are not a compute dtype we offer.
_DTYPES = {'fp32': 'float32', 'float32': 'float32', 'float': 'float32',
           'bf16': 'bfloat16', 'bfloat16': 'bfloat16'}
# String keys where YAML null means "not set", as an empty string does.
_NULL_MEANS_EMPTY = frozenset(('data.token_dir', 'data.latent_dir', 'data.data_dir'))

def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
  try:
    with open(path, encoding='utf-8') as f:
      data = yaml.safe_load(f)
  except OSError as e:
    raise FileNotFoundError(f'cannot read config file {str(path)!r}: {e}') from e
  except yaml.YAMLError as e:
    raise ValueError(f'invalid YAML in config file {str(path)!r}: {e}') from e
  if data is None:
    return {}
  if not isinstance(data, dict):
    raise ValueError(f'config file {str(path)!r} must hold a mapping, not {type(data).__name__}')
  return data


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for name, value in tree.items():
    key = f'{prefix}{name}'
    if isinstance(value, dict) and value:
      flat.update(_flatten(value, key + '.'))
    else:
      flat[key] = value
  return flat


def _coerce(key: str, value: Any, current: Any) -> Any:
  """`value` converted to the type of our default `current`, or a ValueError naming `key`."""
  if value is None and key in _NULL_MEANS_EMPTY:
    return ''
  if isinstance(current, bool):
    ok = isinstance(value, bool)
  elif isinstance(current, int):
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(current, float):
    if isinstance(value, str):
      # PyYAML (YAML 1.1) reads '1e-4' as a string; the reference float()s it.
      try:
        value = float(value)
      except ValueError:
        pass
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif isinstance(current, str):
    ok = isinstance(value, str)
  else:
    ok = True
  if not ok:
    raise ValueError(f'config key {key!r}: {value!r} is not a valid {type(current).__name__}')
  return value


def _assign(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  section, name = key.split('.')
  config[section][name] = _coerce(key, value, config[section][name])


def _our_keys(config: ml_collections.ConfigDict) -> frozenset[str]:
  return frozenset(f'{section}.{name}' for section, group in config.items()
                   if isinstance(group, ml_collections.ConfigDict) for name in group)


def _set_dtype(config: ml_collections.ConfigDict, value: Any) -> None:
  # The reference's parse_dtype reads a missing/null dtype as float32.
  name = 'fp32' if value is None else str(value).strip().lower()
  if name not in _DTYPES:
    raise ValueError(f'config key \'training.dtype\': {value!r} is not supported; '
                     f'expected one of {sorted(_DTYPES)}')
  config.model.dtype = _DTYPES[name]


def _set_optimizer_type(config: ml_collections.ConfigDict, value: Any) -> None:
  # The reference reads `type or name`: a non-empty type wins over name.
  if value:
    _assign(config, 'optimizer.name', value)


def _set_vocab_size(config: ml_collections.ConfigDict, value: Any) -> None:
  # The reference sizes the model by len(tokenizer), the dummy tokenizer's vocab_size.
  _assign(config, 'tokenizer.vocab_size', value)
  _assign(config, 'model.vocab_size', value)


def _set_max_samples(config: ml_collections.ConfigDict, value: Any) -> None:
  # The reference's None (all samples) is our 0.
  _assign(config, 'data.max_samples', 0 if value is None else value)


def _check_loss_type(config: ml_collections.ConfigDict, value: Any) -> None:
  del config
  if value != 'cycle_vae':  # The reference trainer refuses any other loss too.
    raise ValueError(f'config key \'loss.loss_type\': {value!r}; only \'cycle_vae\' exists')


# Applied after the plain keys, so that e.g. optimizer.type beats optimizer.name.
_SPECIAL_KEYS: dict[str, Callable[[ml_collections.ConfigDict, Any], None]] = {
    'training.dtype': _set_dtype,
    'optimizer.type': _set_optimizer_type,
    'tokenizer.vocab_size': _set_vocab_size,
    'data.max_samples': _set_max_samples,
    'loss.loss_type': _check_loss_type,
}
_REFERENCE_KEYS = (frozenset(_SAME_KEYS) | frozenset(_RENAMED_KEYS) | frozenset(_SPECIAL_KEYS)
                   | _UNUSED_KEYS)


def _parse_override(override: str) -> tuple[str, Any]:
  key, sep, raw = override.partition('=')
  key = key.strip()
  if not sep or not key:
    raise ValueError(f'override {override!r} is not of the form a.b=value')
  try:
    return key, yaml.safe_load(raw)
  except yaml.YAMLError as e:
    raise ValueError(f'override {key!r}: cannot parse value {raw!r}: {e}') from e


def _set_nested(tree: dict[str, Any], key: str, value: Any) -> None:
  *sections, name = key.split('.')
  for section in sections:
    tree = tree.setdefault(section, {})
    if not isinstance(tree, dict):
      raise ValueError(f'override {key!r}: {section!r} is not a section in the YAML file')
  tree[name] = value


def _apply_reference(flat: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """Writes the flat reference keys into `config`; returns the keys that had no effect."""
  ignored = []
  for key, value in flat.items():
    if key in _SAME_KEYS or key in _RENAMED_KEYS:
      _assign(config, _RENAMED_KEYS.get(key, key), value)
    elif key not in _SPECIAL_KEYS:
      ignored.append(key)
  for key, set_value in _SPECIAL_KEYS.items():
    if key in flat:
      set_value(config, flat[key])
  return ignored


def read_reference_yaml(
    path: str | os.PathLike,
    overrides: Iterable[str] = (),
) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
  """Our config from a reference YAML file, and the reference keys that were ignored."""
  raw = _read_yaml(path)
  config = config_lib.default_config()
  ours = _our_keys(config)
  reference_keys = _REFERENCE_KEYS | frozenset(_flatten(raw))
  late_overrides = []
  for key, value in map(_parse_override, overrides):
    if key in reference_keys:
      _set_nested(raw, key, value)
    elif key in ours:
      late_overrides.append((key, value))
    else:
      raise ValueError(f'override names unknown config key {key!r}')
  for key, value in _REFERENCE_DEFAULTS.items():
    _assign(config, key, value)
  try:
    ignored = _apply_reference(_flatten(raw), config)
    for key, value in late_overrides:
      _assign(config, key, value)
  except ValueError as e:
    raise ValueError(f'{e} (config file {str(path)!r})') from e
  return config, tuple(ignored)


def load_reference_yaml(path: str | os.PathLike,
                        overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Our config from a reference YAML file; ignored reference keys are logged as a warning."""
  config, ignored = read_reference_yaml(path, overrides)
  if ignored:
    logging.warning('%s: reference keys with no effect in lgdlm_jax: %s', path,
                    ', '.join(ignored))
  return config
