"""Small datasets for the data tests: samples that carry their id, their files, configs that read them,
and a stand-in sentence encoder for prepare_data."""

import os
import zlib

import numpy as np

from lgdlm_jax import config as config_lib
from lgdlm_jax import data

SEQ_LEN, LATENT_DIM, VOCAB = 8, 4, 50
SPEC = data.SampleSpec(seq_len=SEQ_LEN, latent_dim=LATENT_DIM, vocab_size=VOCAB, pad_id=0)


def sample_arrays(i: int, length: int = SEQ_LEN):
  """Sample i carries its id in input_ids[0] (i + 1) and latent[0] (i), so batches reveal it."""
  rng = np.random.default_rng(i)
  ids = rng.integers(1, VOCAB, size=length).astype(np.int64)
  ids[0] = i + 1
  mask = np.ones(length, np.int64)
  mask[length - 2 :] = 0  # some padding inside the file, as tokenizers write it
  latent = rng.standard_normal(LATENT_DIM).astype(np.float32)
  latent[0] = i
  return ids, mask, latent


def write_pair(token_dir, latent_dir, name, i, *, suffix='_tokens.npz', length=SEQ_LEN, latent=None):
  ids, mask, default_latent = sample_arrays(i, length)
  np.savez(os.path.join(token_dir, name + suffix), input_ids=ids, attention_mask=mask)
  np.save(os.path.join(latent_dir, name + '.npy'), default_latent if latent is None else latent)


def make_dirs(root, num, *, layout='split'):
  """Writes `num` good samples; returns (token_dir, latent_dir)."""
  if layout == 'split':
    token_dir, latent_dir = os.path.join(root, 'tok'), os.path.join(root, 'lat')
  else:
    token_dir = os.path.join(root, 'tokens', 'train')
    latent_dir = os.path.join(root, 'latents', 'train')
    os.makedirs(os.path.join(root, 'texts', 'train'))
  os.makedirs(token_dir)
  os.makedirs(latent_dir)
  for i in range(num):
    # Alternate the two token-file namings the reference accepts.
    write_pair(token_dir, latent_dir, f's{i:03d}', i, suffix='_tokens.npz' if i % 2 else '.npz')
  return token_dir, latent_dir


def make_config(
  token_dir='',
  latent_dir='',
  data_dir='',
  *,
  val_ratio=0.0,
  batch=4,
  eval_batch=2,
  skip=False,
  seed=7,
  prefetch=2,
  workers=0,
  max_samples=0,
  max_bad_fraction=0.5,
  synthetic=64,
  seq_len=SEQ_LEN,
  **data_keys,
):
  """A finalized config reading these data; data_keys sets further data.* keys (packing, ...)."""
  config = config_lib.default_config()
  config.model.update(vocab_size=VOCAB, max_seq_len=seq_len, latent_dim=LATENT_DIM)
  config.tokenizer.update(vocab_size=VOCAB, pad_token_id=0, mask_token_id=3)
  if data_keys.get('packing'):  # packed rows train the L2T loss on real tokens, with the length head
    config.loss.text_positions = 'valid'
    config.model.length_head = True
  config.data.update(
    token_dir=token_dir,
    latent_dir=latent_dir,
    data_dir=data_dir,
    val_ratio=val_ratio,
    max_samples=max_samples,
    skip_bad_files=skip,
    max_bad_fraction=max_bad_fraction,
    prefetch_batches=prefetch,
    num_workers=workers,
    synthetic_num_samples=synthetic,
    **data_keys,
  )
  config.training.update(seed=seed, train_batch_size=batch, eval_batch_size=eval_batch)
  return config_lib.finalize(config)


def datasets(config, process_index=0, process_count=1):
  return data.make_datasets(config, process_index=process_index, process_count=process_count)


def ids_of(batch):
  return [int(v) for v in batch['latent'][:, 0]]


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


# ----------------------------------------------------------------------------- prepare_data

TEXTS = [
  'In the beginning God created the heaven and the earth.',
  'And God said, Let there be light: and there was light.',
  'Jesus wept.',
  'The LORD is my shepherd; I shall not want.',
  'A soft answer turneth away wrath: but grievous words stir up anger.',
  'Rejoice evermore.',
  'Pray without ceasing.',
  'And the evening and the morning were the first day.',
]
ENCODER_DIM = 16


def fake_encoder(texts):
  """A deterministic stand-in for a sentence encoder: unit vectors seeded by each text."""
  vectors = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(ENCODER_DIM) for t in texts])
  return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
