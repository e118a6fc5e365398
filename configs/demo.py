"""Demo config: a small model on the shipped KJV sentences with all-MiniLM-L6-v2 latents (data/kjv_demo).

Trains in 1.5-2 minutes on a 2-core CPU (600 steps), long enough for the L2T accuracy to climb
well above its start, and decodes a few validation sentences at the end:

    python -m lgdlm_jax.main --config configs/demo.py --workdir runs/demo

The vocabulary (2048), special-token ids, sequence length (32) and latent size (384) are those
of data/kjv_demo/dataset.json; the paths are relative to the repository root.
"""

import ml_collections

from lgdlm_jax import config as config_lib

DATA_DIR = 'data/kjv_demo'


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.default_config()
  # H = 64 keeps a step under 0.1 s on 2 cores; many small steps beat fewer large ones in a
  # few-minute budget (the attention is 8 x 64 wide whatever H is).
  config.model.update(vocab_size=2048, hidden_size=64, n_blocks=2, cond_dim=64, max_seq_len=32, latent_dim=384,
                      num_residual_streams=1, scan_unroll=2)  # unrolled: 1.25x the steps/s of a scan
  config.tokenizer.update(vocab_size=2048, mask_token_id=4, pad_token_id=0, json_file=f'{DATA_DIR}/tokenizer.json')
  config.data.update(data_dir=DATA_DIR, val_ratio=0.05)
  config.training.update(train_batch_size=16, eval_batch_size=32, num_train_steps=600, lr_schedule='cosine',
                         warmup_steps=20, log_every=50, eval_every=200, eval_batches=3, save_every=300)
  config.optimizer.update(lr=2e-3, weight_decay=0.0)
  # The cycle-text pass decodes text from the T2L latent estimate, which a 2-minute run never makes
  # good; weighted in, it teaches L2T to ignore its latent (val accuracy with the true latents
  # barely beat shuffled ones). At weight 0 it is not computed during training; validation reports it.
  config.loss.cycle_text_weight = 0.0
  return config
