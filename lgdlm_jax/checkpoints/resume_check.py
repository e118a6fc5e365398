"""Safe resume: the config of a resumed run is compared with the one the workdir was trained with.

    resume.check_config(config, workdir)    # before a checkpoint of workdir is restored

The workdir's config.json (written at every start, read with lgdlm_jax.config.from_json, so a file
written before a key existed still loads with that key's default) is compared key by key with the
new config. A change to any key not declared changeable on resume (lgdlm_jax.config.CHANGEABLE_ON_RESUME;
the model, optimizer, objective, data, batch, seed, schedules and EMA are not) would make the resumed
run a different experiment from the one its checkpoint and log belong to, or fail to restore, and is
an error naming every changed key, unless training.allow_config_change is True.
"""

import os

from absl import logging
import ml_collections

from lgdlm_jax import config as config_lib
from lgdlm_jax.errors import ConfigError


def changed_keys(stored: ml_collections.ConfigDict, current: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{key: (stored value, current value)} for every key whose value differs."""
  before, after = config_lib.flat_items(stored), config_lib.flat_items(current)
  return {
    key: (before.get(key), after.get(key))
    for key in sorted(before.keys() | after.keys())
    if before.get(key) != after.get(key)
  }


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ConfigError naming every key that changed since the workdir's config.json and may not
  change on resume (unless training.allow_config_change); logs the keys that changed and may."""
  path = os.path.join(workdir, config_lib.CONFIG_FILE)
  if not os.path.isfile(path):
    logging.warning(
      '%s has a checkpoint but no %s: the config cannot be compared with the one it was trained with',
      workdir,
      config_lib.CONFIG_FILE,
    )
    return
  with open(path) as f:
    stored = config_lib.from_json(f.read(), source=path)
  changes = changed_keys(stored, config)
  describe = lambda keys: ', '.join(f'{k} ({changes[k][0]!r} -> {changes[k][1]!r})' for k in keys)
  refused = [k for k in changes if k not in config_lib.CHANGEABLE_ON_RESUME]
  allowed = [k for k in changes if k in config_lib.CHANGEABLE_ON_RESUME]
  if refused and not config.training.allow_config_change:
    raise ConfigError(
      f'resuming {workdir} with a config that differs from its {config_lib.CONFIG_FILE} in '
      f'{describe(refused)}; '
      'use a new workdir (with init_from to start from these weights), restore those values, or '
      'set training.allow_config_change=True'
    )
  if refused:
    logging.warning('Resuming with changed keys (training.allow_config_change): %s', describe(refused))
  if allowed:
    logging.info('Resuming with changed keys: %s', describe(allowed))
  if 'training.num_train_steps' in changes and config.training.lr_schedule != 'constant':
    logging.warning(
      'training.num_train_steps changed under the %r learning-rate schedule: the learning rate '
      'from the resumed step on follows the new length',
      config.training.lr_schedule,
    )
