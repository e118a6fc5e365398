"""Packed shards: `prepare_data pack` gives the same batches as the files it packed; `check` finds damage."""

import json
import os
from unittest import mock

import ml_collections
import numpy as np
import pytest

from lgdlm_jax import data
from lgdlm_jax import prepare_data
from lgdlm_jax.data import packed_reader
from lgdlm_jax.data import packed_writer
from lgdlm_jax.data import text_dataset
from tests.helpers import datasets


def _pack(tmp_path, num=23, **kw):
  token_dir, latent_dir = datasets.make_dirs(str(tmp_path / 'files'), num)
  out = str(tmp_path / 'packed')
  manifest = packed_writer.pack(token_dir, latent_dir, out, **{'records_per_shard': 10, **kw})
  return token_dir, latent_dir, out, manifest


def _all_batches(config, steps):
  train, val = datasets.datasets(config)
  with train:
    batches = datasets.take(train, steps)
  return batches, list(val()) if val else []


def test_packed_shards_give_the_batches_of_the_files_they_were_packed_from(tmp_path):
  token_dir, latent_dir, out, manifest = _pack(tmp_path, vocab_size=datasets.VOCAB)
  assert (manifest.num_samples, len(manifest.shards), manifest.token_dtype) == (23, 3, 'uint16')
  assert [s['num_samples'] for s in manifest.shards] == [10, 10, 3]
  assert (manifest.latent_dim, manifest.max_length, manifest.max_token_id) == (datasets.LATENT_DIM, 8, 49)
  assert packed_reader.read_manifest(out) == manifest
  for max_samples in (0, 17):
    common = dict(val_ratio=0.2, batch=4, eval_batch=2, max_samples=max_samples)
    files, files_val = _all_batches(datasets.make_config(token_dir, latent_dir, **common), 12)
    from_shards, packed_val = _all_batches(datasets.make_config(data_dir=out, **common), 12)
    datasets.assert_batches_equal(from_shards, files)  # 12 steps: 3 epochs and more
    datasets.assert_batches_equal(packed_val, files_val)
    assert len(packed_val) == (1 if max_samples else 2)  # 4 or 3 validation samples


def test_a_bad_sample_fails_the_pack_unless_skipped(tmp_path):
  token_dir, latent_dir = datasets.make_dirs(str(tmp_path / 'files'), 6)
  np.save(os.path.join(latent_dir, 's002.npy'), np.zeros(3, np.float32))
  os.remove(os.path.join(latent_dir, 's004.npy'))
  out = str(tmp_path / 'packed')
  with pytest.raises(data.DataError, match=r'2 bad samples .*s00[24].*nothing was packed'):
    packed_writer.pack(token_dir, latent_dir, out)
  assert not os.listdir(out)  # no half dataset left behind
  manifest = packed_writer.pack(token_dir, latent_dir, out, skip_bad_files=True)
  assert manifest.num_samples == 4 and manifest.num_excluded == 2
  reasons = ' '.join(e['reason'] for e in manifest.excluded)
  assert 's002.npy: latent shape (3,)' in reasons and 's004.npz: no latent partner' in reasons
  with pytest.raises(data.DataError, match='already holds a packed dataset'):
    packed_writer.pack(token_dir, latent_dir, out)


def test_a_packed_dataset_that_does_not_fit_the_config_is_refused_before_training(tmp_path):
  _, _, out, _ = _pack(tmp_path, num=8)
  config = datasets.make_config(data_dir=out)
  with pytest.raises(data.DataError, match=r'manifest.json: latent size 4 != model.latent_dim 5'):
    data.make_datasets(_with(config, latent_dim=5), process_index=0, process_count=1)
  with pytest.raises(data.DataError, match=r'manifest.json: token id 4\d outside model.vocab_size 40'):
    data.make_datasets(_with(config, vocab_size=40), process_index=0, process_count=1)


def _with(config, **model):
  unfrozen = ml_collections.ConfigDict(config.to_dict())
  unfrozen.model.update(model)
  unfrozen.tokenizer.vocab_size = unfrozen.model.vocab_size
  return unfrozen


def test_check_passes_a_good_packed_dataset_and_finds_a_damaged_shard(tmp_path, capsys):
  _, _, out, manifest = _pack(tmp_path, num=12, vocab_size=datasets.VOCAB)
  assert prepare_data.main(['check', out]) == 0
  assert '12 samples checked (vocab_size=50, seq_len=None, latent_dim=4): 12 good, 0 bad' in capsys.readouterr().out
  shard = os.path.join(out, manifest.shards[1]['file'])
  with open(shard, 'r+b') as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0xFF]))
  assert prepare_data.main(['check', out]) == 1
  assert f'{shard}: {manifest.shards[1]["bytes"]} bytes with CRC-32' in capsys.readouterr().out


def test_pack_and_check_command_lines(tmp_path, capsys):
  root = str(tmp_path / 'files')
  datasets.make_dirs(root, 6, layout='data_dir')
  with open(os.path.join(root, 'dataset.json'), 'w') as f:
    json.dump({'vocab_size': datasets.VOCAB, 'latent_dim': datasets.LATENT_DIM, 'pad_token_id': 0}, f)
  out = str(tmp_path / 'packed')
  assert prepare_data.main(['pack', '--from', root, '--out', out]) == 0
  assert '6 samples packed into 1 shards' in capsys.readouterr().out
  manifest = packed_reader.read_manifest(out)
  assert (manifest.vocab_size, manifest.pad_token_id, manifest.token_dtype) == (datasets.VOCAB, 0, 'uint16')
  assert os.path.isfile(os.path.join(out, 'dataset.json'))
  assert prepare_data.main(['check', root]) == 0
  for argv in (
    ['pack', '--from', root],
    ['pack', '--out', out],
    ['frobnicate'],
    ['check'],
    ['pack', '--from', root, '--token_dir', root, '--latent_dir', root, '--out', out],
  ):
    assert prepare_data.main(argv) == 2, argv
  assert prepare_data.main(['check', str(tmp_path / 'missing')]) == 1
  assert 'not a directory' in capsys.readouterr().err


def test_the_text_form_still_works_and_writes_shards_directly(tmp_path, capsys):
  texts = tmp_path / 'texts.txt'
  texts.write_text('\n'.join(datasets.TEXTS))
  with mock.patch.object(text_dataset, 'minilm_encoder', lambda batch_size: datasets.fake_encoder):
    for flag in ('--nopacked', '--packed'):
      argv = [
        '--texts',
        str(texts),
        '--train_tokenizer_vocab',
        '120',
        '--seq_len',
        '16',
        '--out',
        str(tmp_path / flag),
        flag,
      ]
      assert prepare_data.main(argv) == 0
  assert json.loads(capsys.readouterr().out.split('\n}')[0] + '}')['num_samples'] == 8
  assert packed_reader.is_packed(str(tmp_path / '--packed'))
  assert len(os.listdir(tmp_path / '--nopacked' / 'latents' / 'train')) == 8
  assert prepare_data.main(['--texts', str(texts), '--out', str(tmp_path / 'x')]) == 2  # no tokenizer given
