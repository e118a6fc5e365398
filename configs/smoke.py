"""Smoke config: the reference's `mmdit_cycle_vae.yaml` sizes (H=256, 2 blocks, C=256, S=128, D=32, V=8192, R=2).

Use: python -m lgdlm_jax.main --config configs/smoke.py --config.training.num_train_steps=20
"""

import ml_collections

from lgdlm_jax import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  # model.scan_unroll stays auto: on CPU both blocks unrolled, which buys more steps/s than the few
  # seconds of compile time it costs (README, Benchmarks), a scan on accelerators.
  return config_lib.default_config()
