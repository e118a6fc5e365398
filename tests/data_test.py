"""Tests for lgdlm_jax.data: discovery, validation, sharding, checkpointable iteration."""

import ast
import dataclasses
import json
import os
import tempfile
from unittest import mock

from absl.testing import parameterized
import chex
import ml_collections
import numpy as np
import pytest

from lgdlm_jax import data

SEQ_LEN, LATENT_DIM, VOCAB = 8, 4, 50
SPEC = data.SampleSpec(seq_len=SEQ_LEN, latent_dim=LATENT_DIM, vocab_size=VOCAB, pad_id=0)


def _sample_arrays(i: int, length: int = SEQ_LEN):
  """Sample i carries its id in input_ids[0] (i + 1) and latent[0] (i), so batches reveal it."""
  rng = np.random.default_rng(i)
  ids = rng.integers(1, VOCAB, size=length).astype(np.int64)
  ids[0] = i + 1
  mask = np.ones(length, np.int64)
  mask[length - 2:] = 0  # some padding inside the file, as tokenizers write it
  latent = rng.standard_normal(LATENT_DIM).astype(np.float32)
  latent[0] = i
  return ids, mask, latent


def _write_pair(token_dir, latent_dir, name, i, *, suffix='_tokens.npz', length=SEQ_LEN,
                latent=None):
  ids, mask, default_latent = _sample_arrays(i, length)
  np.savez(os.path.join(token_dir, name + suffix), input_ids=ids, attention_mask=mask)
  np.save(os.path.join(latent_dir, name + '.npy'), default_latent if latent is None else latent)


def _make_dirs(root, num, *, layout='split'):
  """Writes `num` good samples; returns (token_dir, latent_dir) or the data_dir root."""
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
    _write_pair(token_dir, latent_dir, f's{i:03d}', i, suffix='_tokens.npz' if i % 2 else '.npz')
  return token_dir, latent_dir


def _config(token_dir='', latent_dir='', data_dir='', *, val_ratio=0.0, batch=4, eval_batch=2,
            skip=False, seed=7, prefetch=0, max_samples=0):
  return ml_collections.ConfigDict(dict(
      model=dict(vocab_size=VOCAB, max_seq_len=SEQ_LEN, latent_dim=LATENT_DIM),
      data=dict(token_dir=token_dir, latent_dir=latent_dir, data_dir=data_dir, split='train',
                val_ratio=val_ratio, max_samples=max_samples, skip_bad_files=skip,
                prefetch_batches=prefetch, num_workers=2, synthetic_num_samples=64),
      training=dict(seed=seed, train_batch_size=batch, eval_batch_size=eval_batch),
      tokenizer=dict(pad_token_id=0),
  ))


def _tmpdir(test):
  # absl's create_tempdir needs parsed flags, which pytest does not provide.
  tmp = tempfile.TemporaryDirectory()
  test.addCleanup(tmp.cleanup)
  return tmp.name


def _ids(batch):
  return [int(v) for v in batch['latent'][:, 0]]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


class LoadingTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters('split', 'data_dir')
  def test_batches_hold_the_file_contents(self, layout):
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 8, layout=layout)
    config = (_config(token_dir, latent_dir) if layout == 'split' else _config(data_dir=root))
    train, val = data.make_datasets(config, process_index=0, process_count=1)
    self.assertIsNone(val)  # val_ratio 0
    seen = []
    for batch in _take(train, 2):
      self.assertEqual(batch['input_ids'].dtype, np.int32)
      self.assertEqual(batch['attention_mask'].dtype, np.bool_)
      self.assertEqual(batch['latent'].dtype, np.float32)
      chex.assert_shape([batch['input_ids'], batch['attention_mask']], (4, SEQ_LEN))
      chex.assert_shape(batch['latent'], (4, LATENT_DIM))
      for row, i in enumerate(_ids(batch)):
        ids, mask, latent = _sample_arrays(i)
        np.testing.assert_array_equal(batch['input_ids'][row], ids)
        np.testing.assert_array_equal(batch['attention_mask'][row], mask.astype(bool))
        np.testing.assert_array_equal(batch['latent'][row], latent)
        seen.append(i)
    self.assertCountEqual(seen, range(8))  # one epoch of 8 samples = 2 batches of 4

  def test_short_sequence_is_right_padded_and_1xD_latent_accepted(self):
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 0)
    _, _, latent = _sample_arrays(3)
    _write_pair(token_dir, latent_dir, 'a', 3, length=5, latent=latent[None])
    (files,), _ = data.discover_samples(token_dir, latent_dir)
    self.assertEqual(files.name, 'a')
    sample = data.read_sample(files, dataclasses.replace(SPEC, pad_id=9))
    ids, mask, _ = _sample_arrays(3, 5)
    np.testing.assert_array_equal(sample['input_ids'], np.r_[ids, [9, 9, 9]])
    np.testing.assert_array_equal(sample['attention_mask'], np.r_[mask, [0, 0, 0]].astype(bool))
    np.testing.assert_array_equal(sample['latent'], latent)

  def test_reading_does_not_parse_python(self):
    # numpy's loader uses ast, which races with other threads' parses on CPython 3.11.
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 1)
    np.save(os.path.join(latent_dir, 's000.npy'), np.asfortranarray(np.ones((1, LATENT_DIM))))
    (files,), _ = data.discover_samples(token_dir, latent_dir)
    with mock.patch.object(ast, 'parse', side_effect=AssertionError('ast used')):
      sample = data.read_sample(files, SPEC)
    np.testing.assert_array_equal(sample['latent'], np.ones(LATENT_DIM, np.float32))
    np.testing.assert_array_equal(sample['input_ids'], _sample_arrays(0)[0])

  def test_max_samples_keeps_the_first_sorted_names(self):
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 8)
    train, _ = data.make_datasets(_config(token_dir, latent_dir, max_samples=4),
                                  process_index=0, process_count=1)
    self.assertEqual(train.steps_per_epoch, 1)
    self.assertCountEqual(_ids(next(train)), range(4))


class SplitTest(chex.TestCase):

  def test_split_is_deterministic_disjoint_and_covering(self):
    train, val = data.split_train_val(100, 0.1, seed=3)
    train2, val2 = data.split_train_val(100, 0.1, seed=3)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    self.assertLen(val, 10)
    self.assertEmpty(np.intersect1d(train, val))
    self.assertCountEqual(np.r_[train, val], range(100))
    # The seed decides which samples: another seed gives another split, not the last 10%.
    _, val_other = data.split_train_val(100, 0.1, seed=4)
    self.assertFalse(np.array_equal(val, val_other))
    self.assertFalse(np.array_equal(val, np.arange(90, 100)))

  def test_small_positive_ratio_still_gives_one_val_sample(self):
    _, val = data.split_train_val(10, 0.05, seed=0)
    self.assertLen(val, 1)
    _, none = data.split_train_val(10, 0.0, seed=0)
    self.assertEmpty(none)

  def test_val_batches_come_from_the_val_split_only(self):
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 20)
    config = _config(token_dir, latent_dir, val_ratio=0.25, eval_batch=2)
    train, val_factory = data.make_datasets(config, process_index=0, process_count=1)
    _, expected_val = data.split_train_val(20, 0.25, seed=7)
    val_ids = [i for b in val_factory() for i in _ids(b)]
    self.assertEqual(val_ids, list(expected_val[:4]))  # fixed order; 5th dropped (batch of 2)
    self.assertEqual(val_ids, [i for b in val_factory() for i in _ids(b)])  # repeatable
    self.assertEqual([i for b in val_factory(max_batches=1) for i in _ids(b)], val_ids[:2])
    train_ids = {i for b in _take(train, train.steps_per_epoch) for i in _ids(b)}
    self.assertLen(train_ids, 12)  # 15 train samples, 3 whole batches of 4
    self.assertEmpty(train_ids & set(val_ids))


def _corrupt_truncated_npz(token_dir, latent_dir):
  path = os.path.join(token_dir, 's001_tokens.npz')
  with open(path, 'rb') as f:
    payload = f.read()
  with open(path, 'wb') as f:
    f.write(payload[:len(payload) // 2])
  return path


def _corrupt_truncated_npy(token_dir, latent_dir):
  path = os.path.join(latent_dir, 's001.npy')
  with open(path, 'rb') as f:
    payload = f.read()
  with open(path, 'wb') as f:
    f.write(payload[:-6])
  return path


def _rewrite_tokens(transform):
  def corrupt(token_dir, latent_dir):
    path = os.path.join(token_dir, 's001_tokens.npz')
    ids, mask, _ = _sample_arrays(1)
    np.savez(path, **transform(ids, mask))
    return path
  return corrupt


def _rewrite_latent(latent):
  def corrupt(token_dir, latent_dir):
    path = os.path.join(latent_dir, 's001.npy')
    np.save(path, latent)
    return path
  return corrupt


def _remove_latent(token_dir, latent_dir):
  os.remove(os.path.join(latent_dir, 's001.npy'))
  return os.path.join(token_dir, 's001_tokens.npz')  # the orphaned token file is named


def _set(array, index, value):
  array = array.copy()
  array[index] = value
  return array


CORRUPTIONS = dict(
    truncated_npz=(_corrupt_truncated_npz, 'cannot read'),
    truncated_npy=(_corrupt_truncated_npy, 'truncated array data'),
    missing_key=(_rewrite_tokens(lambda ids, mask: dict(input_ids=ids)), 'attention_mask'),
    too_long=(_rewrite_tokens(lambda ids, mask: dict(input_ids=np.r_[ids, 1],
                                                     attention_mask=np.r_[mask, 1])), 'length 9'),
    mask_length=(_rewrite_tokens(lambda ids, mask: dict(input_ids=ids, attention_mask=mask[:5])),
                 'shape'),
    id_too_large=(_rewrite_tokens(lambda ids, mask: dict(input_ids=_set(ids, 3, VOCAB),
                                                         attention_mask=mask)), 'input_ids[3]'),
    id_negative=(_rewrite_tokens(lambda ids, mask: dict(input_ids=_set(ids, 2, -1),
                                                        attention_mask=mask)), 'input_ids[2]'),
    float_ids=(_rewrite_tokens(lambda ids, mask: dict(input_ids=ids.astype(np.float32),
                                                      attention_mask=mask)), 'dtype'),
    mask_not_binary=(_rewrite_tokens(lambda ids, mask: dict(input_ids=ids,
                                                            attention_mask=mask * 2)), '0/1'),
    all_padding=(_rewrite_tokens(lambda ids, mask: dict(input_ids=ids,
                                                        attention_mask=mask * 0)), 'all zero'),
    wrong_latent_dim=(_rewrite_latent(np.zeros(LATENT_DIM + 1, np.float32)), 'latent shape'),
    latent_batch=(_rewrite_latent(np.zeros((2, LATENT_DIM), np.float32)), 'latent shape'),
    nan_latent=(_rewrite_latent(_set(np.zeros(LATENT_DIM, np.float32), 1, np.nan)), 'non-finite'),
    inf_latent=(_rewrite_latent(_set(np.zeros(LATENT_DIM), 1, 1e300)), 'non-finite'),
    no_latent_partner=(_remove_latent, 'no latent partner'),
)


class CorruptionTest(chex.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(*[(name, name) for name in CORRUPTIONS])
  def test_corrupt_sample_raises_data_error_naming_the_file(self, kind):
    corrupt, what = CORRUPTIONS[kind]
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 4)
    path = corrupt(token_dir, latent_dir)
    config = _config(token_dir, latent_dir, batch=4)
    with self.assertRaises(data.DataError) as raised:
      train, _ = data.make_datasets(config, process_index=0, process_count=1)
      next(train)  # one epoch of 4 = every sample, so the bad one is read
    self.assertIn(path, str(raised.exception))
    self.assertIn(what, str(raised.exception))

  def test_error_surfaces_through_the_prefetch_thread(self):
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 4)
    path = _rewrite_latent(np.full(LATENT_DIM, np.nan, np.float32))(token_dir, latent_dir)
    train, _ = data.make_datasets(_config(token_dir, latent_dir, prefetch=2),
                                  process_index=0, process_count=1)
    with self.assertRaisesRegex(data.DataError, path):
      next(train)
    with self.assertRaisesRegex(data.DataError, path):  # retried, not a silent zero batch
      next(train)
    train.close()

  def test_skip_bad_files_skips_and_counts(self):
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 10)
    _corrupt_truncated_npy(token_dir, latent_dir)  # s001
    os.remove(os.path.join(latent_dir, 's004.npy'))  # s004 unpaired
    np.savez(os.path.join(token_dir, 's007_tokens.npz'), input_ids=np.ones(SEQ_LEN))  # no mask
    config = _config(token_dir, latent_dir, batch=2, skip=True)
    train, _ = data.make_datasets(config, process_index=0, process_count=1)
    self.assertEqual(train.num_skipped, 1)  # the unpaired file, found at discovery
    # 9 paired samples -> 4 batches of 2 per epoch; over 4 epochs every sample is read.
    ids = [i for b in _take(train, 16) for i in _ids(b)]
    self.assertNoCommonElements(ids, [1, 4, 7])
    self.assertContainsSubset({0, 2, 3, 5, 6, 8, 9}, set(ids))
    self.assertGreaterEqual(train.get_state()['skipped'], 2)
    self.assertEqual(train.num_skipped, train.get_state()['skipped'] + 1)

  def test_all_bad_with_skipping_raises_instead_of_looping(self):
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 4)
    for i in range(4):
      np.save(os.path.join(latent_dir, f's{i:03d}.npy'), np.zeros(1, np.float32))
    train, _ = data.make_datasets(_config(token_dir, latent_dir, batch=2, skip=True),
                                  process_index=0, process_count=1)
    with self.assertRaisesRegex(data.DataError, 'every sample'):
      next(train)


def _file_iterator(root, num=22, **kw):
  token_dir, latent_dir = _make_dirs(root, num)
  files, _ = data.discover_samples(token_dir, latent_dir)
  source = data.FileSource(files, SPEC)
  return lambda **more: data.BatchIterator(source, seed=1, num_workers=2, **{**kw, **more})


class ShardingTest(chex.TestCase):

  def test_process_shares_are_disjoint_and_cover_each_global_batch(self):
    make = _file_iterator(_tmpdir(self), num=22, global_batch_size=4,
                          prefetch=0)
    single = make()
    shards = [make(process_index=p, process_count=2) for p in range(2)]
    steps = single.steps_per_epoch
    self.assertEqual(steps, 5)  # 22 // 4: the incomplete last global batch is dropped
    epoch_ids = []
    for _ in range(2 * steps):  # two epochs
      whole = _ids(next(single))
      parts = [_ids(next(s)) for s in shards]
      self.assertLen(parts[0], 2)
      self.assertEmpty(set(parts[0]) & set(parts[1]))
      self.assertEqual(parts[0] + parts[1], whole)  # process p holds rows [p*b, (p+1)*b)
      epoch_ids.append(whole)
    first, second = sum(epoch_ids[:steps], []), sum(epoch_ids[steps:], [])
    self.assertLen(set(first), 20)  # no sample twice in an epoch
    self.assertNotEqual(first, second)  # reshuffled with seed + epoch

  def test_global_batch_must_divide_by_process_count(self):
    make = _file_iterator(_tmpdir(self), num=8, prefetch=0)
    with self.assertRaisesRegex(ValueError, 'multiple of process_count'):
      make(global_batch_size=3, process_index=0, process_count=2)


class StateTest(chex.TestCase, parameterized.TestCase):

  @parameterized.product(prefetch=[0, 3], stop_at=[2, 5, 7], skip=[False, True])
  def test_restore_reproduces_the_uninterrupted_batches(self, prefetch, stop_at, skip):
    root = _tmpdir(self)
    make = _file_iterator(root, num=11, global_batch_size=4, prefetch=prefetch,
                          skip_bad_files=skip, process_index=1, process_count=2)
    if skip:
      _rewrite_latent(np.full(LATENT_DIM, np.nan, np.float32))(None, os.path.join(root, 'lat'))
    with make() as uninterrupted:
      reference = _take(uninterrupted, 12)  # 2 steps per epoch: stop_at 2 is an epoch boundary
      self.assertEqual(uninterrupted.get_state()['skipped'] > 0, skip)  # skipping exercised
    interrupted = make()
    head = _take(interrupted, stop_at)
    state = interrupted.get_state()
    interrupted.close()
    self.assertEqual(state, json.loads(json.dumps(state)))
    restored = make()
    restored.set_state(state)
    _assert_batches_equal(head + _take(restored, 12 - stop_at), reference)
    restored.close()

  def test_state_counts_epochs_and_rejects_another_layout(self):
    make = _file_iterator(_tmpdir(self), num=8, global_batch_size=4, prefetch=0)
    iterator = make()
    _take(iterator, 2)  # a whole epoch: the state says so rather than "end of epoch 0"
    self.assertEqual((iterator.get_state()['epoch'], iterator.get_state()['index']), (1, 0))
    next(iterator)
    self.assertEqual(iterator.get_state()['epoch'], 1)
    self.assertEqual(iterator.get_state()['index'], 4)
    other = make(global_batch_size=2)
    with self.assertRaisesRegex(ValueError, 'global_batch_size'):
      other.set_state(iterator.get_state())


class SyntheticTest(chex.TestCase):

  def test_synthetic_batches_are_deterministic_and_in_range(self):
    config = _config(batch=8, val_ratio=0.25, eval_batch=4)
    train_a, val_a = data.make_datasets(config, process_index=0, process_count=1)
    train_b, _ = data.make_datasets(config, process_index=0, process_count=1)
    batches = _take(train_a, 3)
    _assert_batches_equal(batches, _take(train_b, 3))
    for batch in batches:
      ids, mask = batch['input_ids'], batch['attention_mask']
      self.assertEqual(ids.dtype, np.int32)
      self.assertEqual(mask.dtype, np.bool_)
      chex.assert_shape(batch['latent'], (8, LATENT_DIM))
      self.assertTrue(((ids >= 0) & (ids < VOCAB)).all())
      self.assertTrue(mask[:, 0].all())  # every sample has tokens
      np.testing.assert_array_equal(ids[~mask], 0)  # padding carries the pad id
      self.assertTrue(np.isfinite(batch['latent']).all())
    masks = np.concatenate([b['attention_mask'] for b in batches])
    self.assertFalse(masks.all())  # some padding
    val = list(val_a())
    self.assertLen(val, 4)  # 64 * 0.25 = 16 samples in batches of 4
    self.assertFalse(np.array_equal(val[0]['latent'], batches[0]['latent'][:4]))
    other, _ = data.make_datasets(_config(batch=8, seed=8), process_index=0, process_count=1)
    self.assertFalse(np.array_equal(next(other)['latent'], batches[0]['latent']))


class ConfigTest(chex.TestCase):

  def test_both_layouts_at_once_is_an_error(self):
    with self.assertRaisesRegex(ValueError, 'not both'):
      data.make_datasets(_config('a', 'b', data_dir='c'), process_index=0, process_count=1)
    with self.assertRaisesRegex(ValueError, 'together'):
      data.make_datasets(_config('a', ''), process_index=0, process_count=1)

  def test_two_token_files_for_one_name_is_an_error(self):
    root = _tmpdir(self)
    token_dir, latent_dir = _make_dirs(root, 2)
    _write_pair(token_dir, latent_dir, 's000', 0, suffix='_tokens.npz')  # s000.npz exists
    with self.assertRaisesRegex(data.DataError, 's000'):
      data.discover_samples(token_dir, latent_dir)


if __name__ == '__main__':
  pytest.main([__file__, '-q'])
