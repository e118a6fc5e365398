"""Safe resume: the config of a resumed run is compared with the one the workdir was trained with.

    resume.check_config(config, workdir)    # before a checkpoint of workdir is restored

The workdir's config.json (written at every start, read with lgdlm_jax.config.from_json, so a file
written before a key existed still loads with that key's default) is compared key by key with the
new config. A change to any key outside CHANGEABLE_ON_RESUME (the model, optimizer, objective,
data, batch, seed, schedules, EMA) would make the resumed run a different experiment from the one
its checkpoint and log belong to, or fail to restore, and is an error naming every changed key,
unless training.allow_config_change is True.
"""

import os

from absl import logging
import ml_collections

from lgdlm_jax import config as config_lib
from lgdlm_jax.errors import ConfigError

CONFIG_FILE = 'config.json'

# key -> why it may change between the runs of one workdir.
CHANGEABLE_ON_RESUME: dict[str, str] = {
    'init_from': 'only read by a fresh run; a resumed run starts from its checkpoint',
    'init_from_optimizer': 'only read by a fresh run; a resumed run starts from its checkpoint',
    'model.attention': 'the same attention by another backend (e.g. a relaunch on another platform)',
    'model.scan_unroll': 'how many blocks are compiled per scan iteration, not what they compute',
    'model.blockwise_block_size': 'how the blockwise attention tiles its work, not what it computes',
    'model.splash_block_size': 'how the splash kernel tiles its work, not what it computes',
    'data.num_workers': 'how many processes decode the data, not which data',
    'data.max_bad_fraction': 'when the run gives up on bad data, not what it computes',
    'training.num_train_steps': 'extends or shortens the run (a decaying learning-rate schedule is then '
                                'stretched from the resumed step on; a warning says so)',
    'training.log_every': 'logging cadence only',
    'training.eval_every': 'evaluation cadence only',
    'training.eval_batch_size': 'evaluation only',
    'training.eval_batches': 'evaluation only',
    'training.eval_sample_batches': 'evaluation only',
    'training.eval_l2t_steps': 'evaluation only',
    'training.eval_t2l_steps': 'evaluation only',
    'training.eval_temperature': 'evaluation only',
    'training.print_examples': 'console output only',
    'training.save_every': 'checkpoint cadence only',
    'training.keep_checkpoints': 'which checkpoints are kept, not what they hold',
    'training.keep_best_checkpoints': 'which checkpoints are kept, not what they hold',
    'training.best_checkpoint_metric': 'which checkpoints are kept (every checkpoint stores all validation metrics)',
    'training.max_consecutive_nonfinite': 'when the run gives up, not what it computes',
    'training.profile_steps': 'profiling only',
    'training.compilation_cache': 'where compiled programs are cached, not what they compute',
    'training.compilation_cache_dir': 'where compiled programs are cached, not what they compute',
    'training.allow_config_change': 'this switch itself',
    'tokenizer.json_file': 'how token ids are shown as text, not the ids',
    'mesh.fsdp': 'the checkpoint is restored onto whatever mesh this run has (e.g. a relaunch on another slice)',
    'mesh.min_shard_size': 'the checkpoint is restored onto whatever shardings this run has',
    'debug.check_finite': 'a debugging check; the numbers are the same',
    'training.round_gradients': 'the order the gradient is taken in, not its value',
}


def changed_keys(stored: ml_collections.ConfigDict, current: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{key: (stored value, current value)} for every key whose value differs."""
  before, after = config_lib.flat_items(stored), config_lib.flat_items(current)
  return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
          if before.get(key) != after.get(key)}


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ConfigError naming every key that changed since the workdir's config.json and may not
  change on resume (unless training.allow_config_change); logs the keys that changed and may."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    logging.warning('%s has a checkpoint but no %s: the config cannot be compared with the one it was '
                    'trained with', workdir, CONFIG_FILE)
    return
  with open(path) as f:
    stored = config_lib.from_json(f.read(), source=path)
  changes = changed_keys(stored, config)
  describe = lambda keys: ', '.join(f'{k} ({changes[k][0]!r} -> {changes[k][1]!r})' for k in keys)
  refused = [k for k in changes if k not in CHANGEABLE_ON_RESUME]
  allowed = [k for k in changes if k in CHANGEABLE_ON_RESUME]
  if refused and not config.training.allow_config_change:
    raise ConfigError(f'resuming {workdir} with a config that differs from its {CONFIG_FILE} in {describe(refused)}; '
                      'use a new workdir (with init_from to start from these weights), restore those values, or '
                      'set training.allow_config_change=True')
  if refused:
    logging.warning('Resuming with changed keys (training.allow_config_change): %s', describe(refused))
  if allowed:
    logging.info('Resuming with changed keys: %s', describe(allowed))
  if 'training.num_train_steps' in changes and config.training.lr_schedule != 'constant':
    logging.warning('training.num_train_steps changed under the %r learning-rate schedule: the learning rate '
                    'from the resumed step on follows the new length', config.training.lr_schedule)
