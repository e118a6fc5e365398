"""Reads the reference's YAML configs (cycle_vae_impl/configs/*.yaml) into our config, with the reference's meaning.

    config, ignored = read_reference_yaml(path)     # ignored: reference keys that have no effect here

The result starts from lgdlm_jax.config.default_config(). Every reference key lands on one of our
keys (each of ours declares the reference key it is read from, and the reference's default where it
differs from ours), is refused with the reason (a setting lgdlm_jax cannot honour), or is reported
as having no effect; none is dropped silently. Where the reference's code differs from ours the reference's
meaning wins (docs/reference.md has the table):
- `training.train_batch_size` / `eval_batch_size` are per process (DDP): the config says so
  (training.batch_size_per = 'process') and lgdlm_jax.config.for_processes multiplies them by
  the process count after jax.distributed start-up;
- `tokenizer.path` sets the vocabulary (the reference builds the model with len(tokenizer)), the
  [MASK] and [PAD] ids and the tokenizer used to show text;
- `data.initial_scan_limit` (default 10000) caps the number of file pairs, as the reference's
  loader reads only that many; `data.max_samples` caps them too;
- the reference's trainer never evaluates: evaluation and the printed examples are off unless the
  YAML sets lgdlm_jax's own `training.eval_every`;
- keys the YAML leaves out take the reference's defaults where they differ from ours.
A YAML may also hold keys only lgdlm_jax has (e.g. `model.remat_policy`, `training.eval_every`):
they are applied as they are.
"""

from collections.abc import Callable
import os
from typing import Any

from absl import logging
import ml_collections
import yaml

from lgdlm_jax import text
from lgdlm_jax.config import latentdlm_yaml
from lgdlm_jax.config import schema
from lgdlm_jax.errors import ConfigError

# Keys the reference ships that have no effect on what it trains (n_heads and qk_rmsnorm have
# none in the reference either: its MMDiT never receives them), or that name its output folders.
_UNUSED_KEYS = frozenset(
  (
    'data.data_files.train',
    'data.data_files.validation',
    'data.max_val_samples',
    'model.type',
    'model.n_heads',
    'model.qk_rmsnorm',
    'model.use_multimodal',
    'model.use_stub_if_no_mmdit',
    'model.diffusion_process',
    'model.latent_diffusion_process',
    'model.latent_beta_min',
    'model.latent_beta_max',
    'logging.run_name',
    'logging.log_dir',
    'tokenizer.local_files_only',
  )
)
# The reference's loader reads at most this many file pairs when data.initial_scan_limit is absent.
_REFERENCE_SCAN_LIMIT = 10000
# parse_dtype spellings we support; fp16 / fp64 are not a compute dtype we offer.
_DTYPES = {'fp32': 'float32', 'float32': 'float32', 'float': 'float32', 'bf16': 'bfloat16', 'bfloat16': 'bfloat16'}
# How a _coerce error names the type it expected.
_TYPE_NAMES = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}
# String keys where YAML null means "not set", as an empty string does.
_NULL_MEANS_EMPTY = frozenset(('data.token_dir', 'data.latent_dir', 'data.data_dir', 'tokenizer.path'))


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
  try:
    with open(path, encoding='utf-8') as f:
      data = yaml.safe_load(f)
  except OSError as e:
    raise FileNotFoundError(f'cannot read config file {str(path)!r}: {e}') from e
  except yaml.YAMLError as e:
    raise ConfigError(f'invalid YAML in config file {str(path)!r}: {" ".join(str(e).split())}') from e
  except UnicodeDecodeError as e:
    raise ConfigError(f'config file {str(path)!r} is not UTF-8 text: {e}') from e
  if data is None:
    # An empty file is a lost or unfinished copy, not a config: the defaults would train something else.
    raise ConfigError(f'config file {str(path)!r} is empty')
  if not isinstance(data, dict):
    raise ConfigError(f'config file {str(path)!r} must hold a mapping, not {type(data).__name__}')
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
    raise ConfigError(f'{key}={value!r}: expected {_TYPE_NAMES.get(type(current), type(current).__name__)}')
  return value


def _assign(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  section, name = key.split('.')
  config[section][name] = _coerce(key, value, config[section][name])


def _our_keys(config: ml_collections.ConfigDict) -> frozenset[str]:
  return frozenset(
    f'{section}.{name}'
    for section, group in config.items()
    if isinstance(group, ml_collections.ConfigDict)
    for name in group
  )


def _set_dtype(config: ml_collections.ConfigDict, flat: dict[str, Any]) -> None:
  # The reference's parse_dtype reads a missing/null dtype as float32.
  value = flat.get('training.dtype')
  name = 'fp32' if value is None else str(value).strip().lower()
  if name not in _DTYPES:
    raise ConfigError(f'training.dtype={value!r} is not supported; expected one of {", ".join(sorted(_DTYPES))}')
  config.model.dtype = _DTYPES[name]


def _set_optimizer_type(config: ml_collections.ConfigDict, flat: dict[str, Any]) -> None:
  # The reference reads `type or name`: a non-empty type wins over name.
  if flat.get('optimizer.type'):
    _assign(config, 'optimizer.name', flat['optimizer.type'])


def _set_vocab_size(config: ml_collections.ConfigDict, flat: dict[str, Any]) -> None:
  # Without tokenizer.path the reference sizes the model by its dummy tokenizer's vocab_size.
  if 'tokenizer.vocab_size' in flat and not flat.get('tokenizer.path'):
    _assign(config, 'tokenizer.vocab_size', flat['tokenizer.vocab_size'])
    _assign(config, 'model.vocab_size', flat['tokenizer.vocab_size'])


def _set_tokenizer(config: ml_collections.ConfigDict, flat: dict[str, Any]) -> None:
  """tokenizer.path: the reference loads that tokenizer and sizes the model by len(tokenizer)."""
  path = flat.get('tokenizer.path')
  if not path:
    return
  found = text.read_tokenizer_dir(str(path))
  config.tokenizer.json_file = found.json_file
  for key, value in (
    ('tokenizer.vocab_size', found.vocab_size),
    ('model.vocab_size', found.vocab_size),
    ('tokenizer.mask_token_id', found.mask_token_id),
    ('tokenizer.pad_token_id', found.pad_token_id),
  ):
    _assign(config, key, value)


def _set_sample_limit(config: ml_collections.ConfigDict, flat: dict[str, Any]) -> None:
  """data.max_samples, and with token_dir data.initial_scan_limit: the reference's loader reads at most
  that many file pairs from token_dir (its data_dir loader has no scan limit)."""
  scan_limit = flat.get('data.initial_scan_limit', _REFERENCE_SCAN_LIMIT) if flat.get('data.token_dir') else None
  limits = [flat.get('data.max_samples'), scan_limit]
  limits = [int(v) for v in limits if v]  # None or 0: no limit from that key
  _assign(config, 'data.max_samples', min(limits) if limits else 0)


def _refuse_unless(expected: Any, why: str) -> Callable[[ml_collections.ConfigDict, dict[str, Any]], None]:
  """A reference key whose only value lgdlm_jax can honour is `expected`; anything else is refused."""

  def check(config: ml_collections.ConfigDict, flat: dict[str, Any], key: str) -> None:
    del config
    if flat[key] != expected:
      raise ConfigError(f'{key}={flat[key]!r}: {why}')

  return check


# Applied in this order after the plain keys, so that e.g. optimizer.type beats optimizer.name and
# tokenizer.path beats tokenizer.vocab_size. Each reads the flat YAML and writes our config.
_SPECIAL_HANDLERS = (_set_dtype, _set_optimizer_type, _set_vocab_size, _set_tokenizer, _set_sample_limit)
_SPECIAL_KEYS = frozenset(
  (
    'training.dtype',
    'optimizer.type',
    'tokenizer.vocab_size',
    'tokenizer.path',
    'data.max_samples',
    'data.initial_scan_limit',
  )
)


def _set_loss_type(config: ml_collections.ConfigDict, flat: dict[str, Any], key: str) -> None:
  """cycle_vae, or one of latentDLM's modes (lgdlm_jax.config.latentdlm_yaml); anything else is refused."""
  choices = schema.CHOICES['loss.loss_type']
  if flat[key] not in choices:
    raise ConfigError(f'{key}={flat[key]!r}: expected one of {", ".join(choices)}')
  _assign(config, key, flat[key])


_REFUSED_OTHERWISE = {
  'loss.loss_type': _set_loss_type,
  'data.use_preprocessed': _refuse_unless(
    True, "lgdlm_jax reads only preprocessed token/latent files (the reference's JSON loader is not supported)"
  ),
  'data.load_tokens': _refuse_unless(
    True,
    'lgdlm_jax trains on token files; it cannot tokenize raw text '
    'while training (python -m lgdlm_jax.prepare_data does)',
  ),
}


def _apply_reference(flat: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """Writes the flat reference keys into `config`; returns the keys that had no effect."""
  ours = _our_keys(config)
  ignored = []
  for key, value in flat.items():
    if key in schema.FROM_REFERENCE:
      _assign(config, schema.FROM_REFERENCE[key], value)
    elif key in _REFUSED_OTHERWISE:
      _REFUSED_OTHERWISE[key](config, flat, key)
    elif key in _SPECIAL_KEYS:
      continue  # below, in order
    elif key in ours:
      _assign(config, key, value)  # a key only lgdlm_jax has, written into the YAML
    else:
      ignored.append(key)
  for set_value in _SPECIAL_HANDLERS:
    set_value(config, flat)
  return ignored


def read_with_notes(path: str | os.PathLike) -> tuple[ml_collections.ConfigDict, tuple[str, ...], tuple[str, ...]]:
  """Our config from a reference YAML file, the reference keys that have no effect here, and, for latentDLM's
  Hydra YAMLs, lines saying what its trainer really runs with where the file says otherwise."""
  tree, unused, notes = _read_yaml(path), [], []
  try:
    if latentdlm_yaml.is_hydra(tree):
      tree, unused, notes = latentdlm_yaml.translate(latentdlm_yaml.merge_defaults(tree, path, _read_yaml))
    flat = _flatten(tree)
    config = schema.default_config()
    for key, value in schema.REFERENCE_DEFAULTS.items():
      if key not in flat:
        _assign(config, key, value)
    ignored = _apply_reference(flat, config)
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}') from e
  return config, tuple(unused + ignored), tuple(notes)


def read_reference_yaml(path: str | os.PathLike) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
  """Our config from a reference YAML file, and the reference keys that have no effect here."""
  config, ignored, _ = read_with_notes(path)
  return config, ignored


def load_reference_yaml(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Our config from a reference YAML file; what has no effect, what its trainer really runs with, and the
  sample cap, are logged."""
  config, ignored, notes = read_with_notes(path)
  for note in notes:
    logging.warning('%s: %s', path, note)
  if ignored:
    logging.warning('%s: reference keys with no effect in lgdlm_jax: %s', path, ', '.join(ignored))
  if 'model.n_heads' in ignored:
    logging.warning(
      '%s: model.n_heads has no effect, as in the reference (its mmdit never receives it): attention is '
      'model.num_heads x model.head_dim = %d x %d',
      path,
      config.model.num_heads,
      config.model.head_dim,
    )
  if config.data.max_samples:
    logging.warning(
      '%s: at most %d file pairs are read, min(data.max_samples, data.initial_scan_limit) as '
      'in the reference (whose scan limit is %d when absent); --config.data.max_samples=0 reads '
      'them all',
      path,
      config.data.max_samples,
      _REFERENCE_SCAN_LIMIT,
    )
  return config
