"""Configuration: every key declared once (default, rule, help, resume, the reference's YAML key), validation
once at load, the reference's YAML.

    config = default_config()            # or a configs/*.py get_config(), mutable
    frozen = finalize(config)            # spellings normalised, every key validated, then frozen
    frozen = from_json(text)             # a workdir's config.json; keys it predates take the schema's default

Everything past `finalize` reads the frozen config: jitted functions close over values that cannot change.
"""

import json
from typing import Any

from absl import logging
import ml_collections

from lgdlm_jax.config.rules import check_devices
from lgdlm_jax.config.rules import flat_items
from lgdlm_jax.config.rules import validate
from lgdlm_jax.config.rules import validate_section
from lgdlm_jax.config.schema import CHANGEABLE_ON_RESUME
from lgdlm_jax.config.schema import CHOICES
from lgdlm_jax.config.schema import CONFIG_FILE
from lgdlm_jax.config.schema import KEYS
from lgdlm_jax.config.schema import SUMMARY_MODEL_KEYS
from lgdlm_jax.config.schema import default_config
from lgdlm_jax.config.schema import help_text
from lgdlm_jax.errors import ConfigError

Config = ml_collections.FrozenConfigDict


def finalize(config: ml_collections.ConfigDict | ml_collections.FrozenConfigDict) -> Config:
  """The validated, frozen config; ConfigError naming the first bad key and its value.

  A FrozenConfigDict is returned as it is: only finalize makes them, so it was validated.
  """
  if isinstance(config, ml_collections.FrozenConfigDict):
    return config
  config = ml_collections.ConfigDict(config.to_dict())  # never change the caller's object
  # Spellings the reference accepts for one of our choices (it lower-cases names before comparing).
  for key in (k for k in KEYS.values() if k.lower_case):
    section, name = key.name.split('.')
    value = config[section][name]
    if isinstance(value, str):
      value = value.lower()
      config[section][name] = key.aliases.get(value, value)
  validate(config)
  return ml_collections.FrozenConfigDict(config)


def for_processes(config: Config, process_count: int) -> Config:
  """The config with global batch sizes: per-process ones (training.batch_size_per = 'process', the
  reference's DDP meaning) times the process count. Call it after jax.distributed start-up."""
  if config.training.batch_size_per == 'global':
    return config
  resolved = config.as_configdict()
  training = resolved.training
  logging.info(
    'train_batch_size %d and eval_batch_size %d are per process (training.batch_size_per=process): '
    'x %d processes = global batches of %d and %d',
    training.train_batch_size,
    training.eval_batch_size,
    process_count,
    training.train_batch_size * process_count,
    training.eval_batch_size * process_count,
  )
  training.update(
    train_batch_size=training.train_batch_size * process_count,
    eval_batch_size=training.eval_batch_size * process_count,
    batch_size_per='global',
  )
  return ml_collections.FrozenConfigDict(resolved)


def from_json(text: str, source: str = CONFIG_FILE) -> Config:
  """A config written as JSON by an earlier run: the schema's defaults, then every stored value.

  Keys the file predates keep the schema's default; a key the schema no longer has is an error
  naming it (and `source`).
  """
  try:
    stored = json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{source}: not valid JSON ({e})') from e
  if not isinstance(stored, dict):
    raise ConfigError(f'{source}: holds a JSON {type(stored).__name__}, not a config (an object of sections)')
  config = default_config()
  known = flat_items(config)
  for key, value in _flat_json(stored).items():
    if key not in known:
      raise ConfigError(f'{source}: {key} is not a config key of this lgdlm_jax version')
    section, _, name = key.rpartition('.')
    target = config[section] if section else config
    with target.ignore_type():
      target[name] = value
  try:
    return finalize(config)
  except ConfigError as e:
    raise ConfigError(f'{source}: {e}') from e


def _flat_json(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat: dict[str, Any] = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat_json(value, f'{prefix}{name}.'))
    else:
      flat[f'{prefix}{name}'] = value
  return flat
