"""Training from packed shards equals training from the per-sample files they were packed from, and resumes
under another data worker count."""

import os

import numpy as np
import pytest

from lgdlm_jax.data import packed_writer
from lgdlm_jax.training import loop
from lgdlm_jax.training import metrics_log
from tests.helpers import runs

NUM_SAMPLES, STEPS = 70, 20


def _write_files(root, vocab, seq_len, latent_dim):
  """Samples with padded tails of random length, as tokenizers write them."""
  token_dir, latent_dir = os.path.join(root, 'tokens', 'train'), os.path.join(root, 'latents', 'train')
  os.makedirs(token_dir)
  os.makedirs(latent_dir)
  rng = np.random.default_rng(0)
  for i in range(NUM_SAMPLES):
    length = int(rng.integers(3, seq_len + 1))
    ids = np.zeros(seq_len, np.int32)
    ids[:length] = rng.integers(5, vocab, length)
    np.savez_compressed(
      os.path.join(token_dir, f'{i:06d}_tokens.npz'),
      input_ids=ids,
      attention_mask=(np.arange(seq_len) < length).astype(np.uint8),
    )
    np.save(os.path.join(latent_dir, f'{i:06d}.npy'), rng.standard_normal(latent_dim).astype(np.float16))
  return token_dir, latent_dir


@pytest.mark.slow  # two 20-step training runs of the tiny model (the second reuses the first's compilation)
def test_packed_shards_train_to_the_same_losses_as_their_files(tmp_path):
  overrides = dict(runs.TINY_OVERRIDES)
  token_dir, latent_dir = _write_files(
    str(tmp_path / 'files'),
    overrides['model.vocab_size'],
    overrides['model.max_seq_len'],
    overrides['model.latent_dim'],
  )
  packed_writer.pack(token_dir, latent_dir, str(tmp_path / 'packed'), records_per_shard=32)
  losses = {}
  for layout, data_dir in (('files', tmp_path / 'files'), ('packed', tmp_path / 'packed')):
    config = runs.tiny_config(
      **{
        'data.data_dir': str(data_dir),
        'training.num_train_steps': STEPS,
        'training.save_every': 0,
        'training.compilation_cache_dir': str(tmp_path / 'compilation_cache'),
      }
    )
    loop.run(config, str(tmp_path / layout))
    losses[layout] = runs.losses_of(str(tmp_path / layout))
    waits = [r['data_wait_time'] for r in metrics_log.read_log(str(tmp_path / layout)) if 'data_wait_time' in r]
    assert len(waits) == STEPS and all(w >= 0 for w in waits)
  assert sorted(losses['files']) == list(range(1, STEPS + 1))
  assert losses['packed'] == losses['files']  # bit for bit: the same batches
  assert len(set(losses['files'].values())) == STEPS  # the batches differ from step to step


@pytest.mark.slow  # three short training runs of the tiny model, one with two grain worker processes
def test_packed_shards_resume_under_another_worker_count(tmp_path):
  overrides = dict(runs.TINY_OVERRIDES)
  token_dir, latent_dir = _write_files(
    str(tmp_path / 'files'),
    overrides['model.vocab_size'],
    overrides['model.max_seq_len'],
    overrides['model.latent_dim'],
  )
  packed_writer.pack(token_dir, latent_dir, str(tmp_path / 'packed'), records_per_shard=32)

  def run(workdir, steps, workers):
    loop.run(
      runs.tiny_config(
        **{
          'data.data_dir': str(tmp_path / 'packed'),
          'training.num_train_steps': steps,
          'training.save_every': 4,
          'data.num_workers': workers,
          'training.compilation_cache_dir': str(tmp_path / 'compilation_cache'),
        }
      ),
      str(tmp_path / workdir),
    )
    return runs.losses_of(str(tmp_path / workdir))

  uninterrupted = run('uninterrupted', 8, 0)
  run('resumed', 4, 2)
  assert run('resumed', 8, 0) == uninterrupted
