"""The reference's learning rate: a transcription of cycle_vae_impl/utils/lr.py::get_lr, in float64 Python."""

import math

import ml_collections


def get_lr(config: ml_collections.ConfigDict, step: int) -> float:
  """The learning rate the reference's loop sets on every parameter group before micro-batch `step`."""
  base = float(config.optimizer.lr)
  name = str(config.training.lr_schedule).lower()
  warmup = int(config.training.warmup_steps)
  total = int(config.training.num_train_steps)
  if warmup > 0 and step < warmup:
    return base * (step + 1) / warmup
  if name == 'constant' or total <= warmup:
    return base
  progress = (step - warmup) / max(1, total - warmup)
  if name == 'linear':
    return base * max(0.0, 1.0 - progress)
  return base * (0.1 + 0.9 * (1 + math.cos(math.pi * progress)) / 2)
