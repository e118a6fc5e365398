"""The configuration schema: every key lgdlm_jax reads, declared once, and what is derived from the declarations.

Keys follow the reference's YAML sections (model, data, training, loss, logging, optimizer, tokenizer) so users
moving from it recognise them; mesh and debug are ours. Each key is declared in one of
model_keys.py, training_keys.py and run_keys.py (lgdlm_jax.config.declare.Key: default, rule, help,
may it change on resume, the reference's YAML key); a key declared twice is an error at import.
This module imports nothing from lgdlm_jax but the config room and errors, so every room may read it.
"""

from typing import Any

import ml_collections
from ml_collections import config_dict

from lgdlm_jax.config import model_keys
from lgdlm_jax.config import run_keys
from lgdlm_jax.config import training_keys
from lgdlm_jax.config.declare import Key
from lgdlm_jax.config.declare import OneOf
from lgdlm_jax.config.declare import declare

# A workdir's config, and the model config of a directory the converter wrote.
CONFIG_FILE = 'config.json'

KEYS: dict[str, Key] = declare(
  (
    *run_keys.START,
    *model_keys.KEYS,
    *run_keys.DATA,
    *training_keys.KEYS,
    *run_keys.LOSS,
    *run_keys.OPTIMIZER,
    *run_keys.LOGGING,
    *run_keys.OTHER,
  )
)

# The allowed values of every key that takes one of a few names.
CHOICES: dict[str, tuple[str, ...]] = {k.name: k.rule.values for k in KEYS.values() if isinstance(k.rule, OneOf)}
# key -> why it may change between the runs of one workdir (lgdlm_jax.checkpoints.resume_check).
CHANGEABLE_ON_RESUME: dict[str, str] = {k.name: k.resume for k in KEYS.values() if k.resume}
# The reference's YAML key -> ours (lgdlm_jax.config.reference_yaml).
FROM_REFERENCE: dict[str, str] = {k.reference: k.name for k in KEYS.values() if k.reference}
# Our key -> the reference's default, where it differs from ours.
REFERENCE_DEFAULTS: dict[str, Any] = {k.name: k.reference_default for k in KEYS.values() if k.has_reference_default}
# The model keys that describe a run in one line (bench's results).
SUMMARY_MODEL_KEYS: tuple[str, ...] = tuple(
  k.name.removeprefix('model.') for k in KEYS.values() if k.summary and k.name.startswith('model.')
)


def default_config() -> ml_collections.ConfigDict:
  """Every key lgdlm_jax reads, at the smoke sizes; configs/*.py start from this and change sizes."""
  tree: dict[str, Any] = {}
  for key in KEYS.values():
    section, _, name = key.name.rpartition('.')
    # None defaults are OneOf keys: a string placeholder, so that a name can be set later.
    value = config_dict.placeholder(str) if key.default is None else key.default
    (tree.setdefault(section, {}) if section else tree)[name] = value
  return ml_collections.ConfigDict(tree)


def help_text() -> str:
  """Every key with its default and help, by section: what `--help_config` prints."""
  lines = ['Config keys (--config.KEY=VALUE); the default, then what it does:']
  section = None
  for key in KEYS.values():
    here = key.name.rpartition('.')[0]
    if here != section:
      section = here
      lines.append(f'\n{here or "(top level)"}:')
    choices = f' [{" | ".join(key.rule.values)}]' if isinstance(key.rule, OneOf) else ''
    lines.append(f'  {key.name}={key.default!r}{choices}\n      {key.help}')
  return '\n'.join(lines)
