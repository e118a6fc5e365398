"""Pretraining config: latentDLM's stable trainer at the cluster config's sizes, on the schedule the reference
recommends (its `mmdit_preprocessed.yaml`): 5,000 steps unconditional, 10,000 L2T, 10,000 T2L, repeated.

Use: python -m lgdlm_jax.main --config configs/pretrain.py --workdir runs/pretrain \
       --config.data.token_dir=... --config.data.latent_dir=...
     python -m lgdlm_jax.main --config configs/pretrain.py:unconditional --workdir ...   (one mode throughout)

Continue a latentDLM run (its SAVE_DIR/RUN_NAME/latest/checkpoint.pt) mid-schedule with its AdamW state:
     python convert_torch_weights.py --input SAVE_DIR/RUN_NAME --output converted/pre
     python -m lgdlm_jax.main --config configs/pretrain.py --workdir runs/pretrain \
       --config.init_from=converted/pre --config.init_from_optimizer=True ...

Then fine-tune with the cycle objective from the pretrained weights:
     python -m lgdlm_jax.main --config configs/finetune.py:runs/pretrain --workdir runs/finetune ...

The argument after the colon is loss.loss_type (default sequential). The model, batch and mesh are
configs/cluster.py's (H=1024, 24 blocks, bfloat16 compute, float32 master weights); docs/reference.md
section 7 says what each mode trains and freezes.
"""

import ml_collections

from configs import cluster

# mmdit_preprocessed.yaml's schedule.
SCHEDULE = (('unconditional', 5000), ('l2t', 10_000), ('t2l', 10_000))


def get_config(loss_type: str = 'sequential') -> ml_collections.ConfigDict:
  config = cluster.get_config()
  config.loss.update(loss_type=loss_type or 'sequential', latent_loss_weight=1.0)
  # Two rounds of the schedule; the cosine learning rate spans both.
  config.training.update(sequential_schedule=SCHEDULE, num_train_steps=2 * sum(steps for _, steps in SCHEDULE))
  # The reference's optimizer as it really runs: torch AdamW with adam.yaml's betas (0.9, 0.99) whatever its
  # YAML's beta2 says, eps 1e-8, decay 0.01, lr 5e-5.
  config.optimizer.update(lr=5e-5, weight_decay=0.01, beta1=0.9, beta2=0.99, eps=1e-8)
  return config
