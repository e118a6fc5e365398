"""The shipped demo dataset (data/kjv_demo) fits configs/demo.py, the training loader reads it, and the
checker finds what is wrong with a damaged copy of it."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import data
from lgdlm_jax import prepare_data
from lgdlm_jax import text
from lgdlm_jax.objective import options as options_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BYTES = 5 * 2**20


def demo_module():
  spec = importlib.util.spec_from_file_location('demo_config', os.path.join(REPO, 'configs', 'demo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def demo_config():
  config = demo_module().get_config()
  config.data.data_dir = os.path.join(REPO, config.data.data_dir)
  config.tokenizer.json_file = os.path.join(REPO, config.tokenizer.json_file)
  return config


def test_demo_config_matches_its_dataset_and_tokenizer():
  config = demo_config()
  config = config_lib.finalize(config)
  options_lib.from_config(config)
  with open(os.path.join(config.data.data_dir, 'dataset.json')) as f:
    info = json.load(f)
  assert (config.model.vocab_size, config.tokenizer.vocab_size) == (info['vocab_size'],) * 2
  assert (config.model.max_seq_len, config.model.latent_dim) == (info['seq_len'], info['latent_dim'])
  assert (config.tokenizer.pad_token_id, config.tokenizer.mask_token_id) == (
    info['pad_token_id'],
    info['mask_token_id'],
  )
  tokenizer = text.load_tokenizer(config.tokenizer.json_file)
  assert text.token_id(tokenizer, '[MASK]') == config.tokenizer.mask_token_id
  assert tokenizer.get_vocab_size() == config.model.vocab_size


def test_demo_config_takes_its_length_and_scales_its_intervals_to_it():
  module = demo_module()
  default, short = module.get_config(), module.get_config('2000')
  assert default.training.num_train_steps == module.STEPS != 2000
  assert short.training.num_train_steps == 2000
  assert (short.training.eval_every, short.training.save_every) == (500, 1000)
  assert (short.loss.cycle_text_warmup_steps, short.loss.cycle_latent_ramp_steps) == (500, 500)
  for bad in ('2k', '3'):
    with pytest.raises(ValueError, match=f'configs/demo.py:{bad}: expected a number of steps'):
      module.get_config(bad)


def test_demo_data_is_small_and_read_by_the_loader():
  config = demo_config()
  sizes = [os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(config.data.data_dir) for f in files]
  assert sum(sizes) < MAX_BYTES
  train, val_batches = data.make_datasets(config, process_index=0, process_count=1)
  with train:
    batch = next(train)
  assert batch['input_ids'].shape == (config.training.train_batch_size, config.model.max_seq_len)
  np.testing.assert_allclose(np.linalg.norm(batch['latent'], axis=-1), 1.0, atol=2e-3)  # unit MiniLM embeddings
  assert sum(1 for _ in val_batches()) == config.training.eval_batches
  with open(os.path.join(config.data.data_dir, 'texts.txt')) as f:
    num_texts = sum(1 for line in f if line.strip())
  assert num_texts == len(os.listdir(os.path.join(config.data.data_dir, 'latents', 'train')))


def test_checker_names_a_truncated_file_a_wrong_latent_size_and_an_out_of_range_id(tmp_path, capsys):
  copy = str(tmp_path / 'kjv_demo')
  shutil.copytree(os.path.join(REPO, 'data', 'kjv_demo'), copy)
  tokens, latents = os.path.join(copy, 'tokens', 'train'), os.path.join(copy, 'latents', 'train')
  truncated = os.path.join(tokens, '000010_tokens.npz')
  with open(truncated, 'rb') as f:
    payload = f.read()
  with open(truncated, 'wb') as f:
    f.write(payload[: len(payload) // 2])
  wrong_size = os.path.join(latents, '000020.npy')
  np.save(wrong_size, np.zeros(383, np.float16))
  out_of_range = os.path.join(tokens, '000030_tokens.npz')
  with np.load(out_of_range) as arrays:
    ids, mask = arrays['input_ids'].copy(), arrays['attention_mask']
  ids[1] = 2048  # the vocabulary has 2048 entries
  np.savez_compressed(out_of_range, input_ids=ids, attention_mask=mask)

  assert prepare_data.main(['check', copy]) == 1
  out = capsys.readouterr().out
  assert '2500 samples checked' in out and '2497 good, 3 bad' in out, out
  assert f'{truncated}: cannot read token file' in out
  assert f'{wrong_size}: latent shape (383,), expected [384]' in out
  assert f'{out_of_range}: input_ids[1] = 2048 outside [0, 2048)' in out
  assert prepare_data.main(['check', os.path.join(REPO, 'data', 'kjv_demo')]) == 0
