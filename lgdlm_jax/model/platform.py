"""The model's choices that depend on the platform it runs on, made once that platform is known.

    config = platform.resolve(config, jax.default_backend())   # or an ahead-of-time compile's target

model.attention = 'auto' becomes a backend (lgdlm_jax.model.attention.resolve) and model.scan_unroll
= 0 a number of blocks per scan iteration (lgdlm_jax.model.mmdit.auto_scan_unroll). Call it after
jax.distributed start-up and before building the model; config.json keeps the 'auto' values.
"""

import ml_collections

from lgdlm_jax.model import attention
from lgdlm_jax.model import mmdit


def resolve(config: ml_collections.FrozenConfigDict, platform: str) -> ml_collections.FrozenConfigDict:
  """The config with a concrete attention backend and scan unroll for `platform` ('cpu', 'gpu', 'tpu', ...)."""
  config = attention.resolve(config, platform)
  if config.model.scan_unroll:
    return config
  updated = config.to_dict()
  updated['model']['scan_unroll'] = mmdit.auto_scan_unroll(config.model.n_blocks, platform)
  return ml_collections.FrozenConfigDict(updated)
