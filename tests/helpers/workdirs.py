"""A tiny training workdir written the way loop.run writes one: tokenizer, config.json and a checkpoint."""

import os

import jax

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax import text
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.data import text_dataset
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import step as train

TEXTS = ['Jesus wept.', 'Rejoice evermore.', 'Pray without ceasing.', 'Quench not the Spirit.']
SEQ_LEN, LATENT_DIM = 8, 8


def make_workdir(workdir: str, length_head: bool = False):
  """A tokenizer, a tiny config using it, config.json and a step-3 checkpoint of a TrainState
  (length_head: of a model with a length head, loss.text_positions='valid')."""
  tokenizer = text_dataset.train_wordpiece(TEXTS, 80)
  tokenizer_path = os.path.join(workdir, 'tokenizer.json')
  os.makedirs(workdir)
  tokenizer.save(tokenizer_path)
  vocab = tokenizer.get_vocab_size()
  config = config_lib.default_config()
  config.model.update(
    vocab_size=vocab,
    hidden_size=32,
    n_blocks=1,
    cond_dim=32,
    max_seq_len=SEQ_LEN,
    latent_dim=LATENT_DIM,
    num_residual_streams=1,
    length_head=length_head,
  )
  config.loss.text_positions = 'valid' if length_head else 'all'
  config.tokenizer.update(
    vocab_size=vocab, mask_token_id=text.token_id(tokenizer, '[MASK]'), pad_token_id=0, json_file=tokenizer_path
  )
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))
  model = model_lib.MultimodalMMDiT(config.model)
  state = train.init_state(config, model, optimizer_lib.make_optimizer(config), jax.random.key(0))
  manager = checkpoint.make_manager(workdir, config)
  checkpoint.save(manager, 3, state)
  manager.wait_until_finished()
  manager.close()
  return config, state
