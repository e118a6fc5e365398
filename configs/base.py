"""Base config: a mid-size model for single-accelerator experiments (H=512, 8 blocks, C=512,
S=512, D=32, R=2, bfloat16 compute, both cycle terms on).

Use: python -m lgdlm_jax.main --config configs/base.py --workdir DIR --config.data.token_dir=...
"""

import ml_collections

from lgdlm_jax import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.default_config()
  config.model.update(
    hidden_size=512, n_blocks=8, cond_dim=512, max_seq_len=512, latent_dim=32, num_residual_streams=2, dtype='bfloat16'
  )
  config.training.update(
    train_batch_size=32,
    eval_batch_size=32,
    num_train_steps=50_000,
    lr_schedule='cosine',
    warmup_steps=1000,
    log_every=50,
    save_every=1000,
    eval_every=1000,
  )
  config.loss.update(cycle_latent_weight=1.0)
  config.optimizer.update(lr=1e-4, grad_clip_norm=1.0)
  return config
