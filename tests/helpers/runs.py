"""A tiny training run's config, the smoke config's path and the losses a run logged."""

import os

from lgdlm_jax import config as config_lib
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.training import metrics_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, 'configs', 'smoke.py')
# A model small enough to compile quickly on a 2-core CPU, every loss term on. One residual stream
# (plain residual), because mHC's streams make the train step markedly slower to compile; the 8-device
# FSDP test keeps mHC, whose odd-shaped parameters are the interesting ones to shard.
TINY_OVERRIDES = {
  'model.vocab_size': 97,
  'tokenizer.vocab_size': 97,
  'tokenizer.mask_token_id': 3,
  'model.hidden_size': 32,
  'model.n_blocks': 1,
  'model.cond_dim': 32,
  'model.max_seq_len': 12,
  'model.num_residual_streams': 1,
  'model.latent_dim': 8,
  'training.train_batch_size': 8,
  'training.eval_batch_size': 8,
  'training.eval_every': 0,
  'loss.cycle_latent_weight': 0.5,
  'data.synthetic_num_samples': 256,
  'optimizer.lr': 3e-3,
}


def tiny_config(**overrides):
  config = config_lib.default_config()
  for key, value in {**TINY_OVERRIDES, **overrides}.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def losses_of(workdir):
  return {r['step']: r['loss'] for r in metrics_log.read_log(workdir) if 'loss' in r}


def saved_steps(workdir):
  """The checkpoint steps in a workdir, ascending."""
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, checkpoint.CHECKPOINTS_DIR)) if n.isdigit())
