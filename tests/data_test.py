"""lgdlm_jax.data: reading and validation, the grain pipeline's order and sharding, bad samples, exact resume."""

import ast
import dataclasses
import json
import os
import tempfile
from unittest import mock

from absl.testing import parameterized
import chex
import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import data
from lgdlm_jax.data import formats
from tests.helpers.datasets import LATENT_DIM
from tests.helpers.datasets import SEQ_LEN
from tests.helpers.datasets import SPEC
from tests.helpers.datasets import VOCAB
from tests.helpers.datasets import assert_batches_equal
from tests.helpers.datasets import datasets
from tests.helpers.datasets import ids_of
from tests.helpers.datasets import make_config
from tests.helpers.datasets import make_dirs
from tests.helpers.datasets import sample_arrays
from tests.helpers.datasets import take
from tests.helpers.datasets import write_pair


def _tmpdir(test):
  # absl's create_tempdir needs parsed flags, which pytest does not provide.
  tmp = tempfile.TemporaryDirectory()
  test.addCleanup(tmp.cleanup)
  return tmp.name


class LoadingTest(chex.TestCase, parameterized.TestCase):
  @parameterized.parameters('split', 'data_dir')
  def test_batches_hold_the_file_contents(self, layout):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 8, layout=layout)
    config = make_config(token_dir, latent_dir) if layout == 'split' else make_config(data_dir=root)
    train, val = datasets(config)
    self.assertIsNone(val)  # val_ratio 0
    seen = []
    with train:
      batches = take(train, 2)
    for batch in batches:
      self.assertEqual(batch['input_ids'].dtype, np.int32)
      self.assertEqual(batch['attention_mask'].dtype, np.bool_)
      self.assertEqual(batch['latent'].dtype, np.float32)
      chex.assert_shape([batch['input_ids'], batch['attention_mask']], (4, SEQ_LEN))
      chex.assert_shape(batch['latent'], (4, LATENT_DIM))
      for row, i in enumerate(ids_of(batch)):
        ids, mask, latent = sample_arrays(i)
        np.testing.assert_array_equal(batch['input_ids'][row], ids)
        np.testing.assert_array_equal(batch['attention_mask'][row], mask.astype(bool))
        np.testing.assert_array_equal(batch['latent'][row], latent)
        seen.append(i)
    self.assertCountEqual(seen, range(8))  # one epoch of 8 samples = 2 batches of 4

  def test_short_sequence_is_right_padded_and_1xD_latent_accepted(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 0)
    _, _, latent = sample_arrays(3)
    write_pair(token_dir, latent_dir, 'a', 3, length=5, latent=latent[None])
    (files,), _ = data.discover_samples(token_dir, latent_dir)
    self.assertEqual(files.name, 'a')
    sample = data.read_sample(files, dataclasses.replace(SPEC, pad_id=9))
    ids, mask, _ = sample_arrays(3, 5)
    np.testing.assert_array_equal(sample['input_ids'], np.r_[ids, [9, 9, 9]])
    np.testing.assert_array_equal(sample['attention_mask'], np.r_[mask, [0, 0, 0]].astype(bool))
    np.testing.assert_array_equal(sample['latent'], latent)

  def test_reading_does_not_parse_python(self):
    # numpy's loader uses ast, which races with other threads' parses on CPython 3.11.
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 1)
    np.save(os.path.join(latent_dir, 's000.npy'), np.asfortranarray(np.ones((1, LATENT_DIM))))
    (files,), _ = data.discover_samples(token_dir, latent_dir)
    with mock.patch.object(ast, 'parse', side_effect=AssertionError('ast used')):
      sample = data.read_sample(files, SPEC)
    np.testing.assert_array_equal(sample['latent'], np.ones(LATENT_DIM, np.float32))
    np.testing.assert_array_equal(sample['input_ids'], sample_arrays(0)[0])

  def test_max_samples_keeps_the_first_sorted_names(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 8)
    train, _ = datasets(make_config(token_dir, latent_dir, max_samples=4))
    with train:
      self.assertEqual(train.steps_per_epoch, 1)
      self.assertCountEqual(ids_of(next(train)), range(4))

  def test_both_layouts_at_once_and_a_name_used_twice_are_errors(self):
    with self.assertRaisesRegex(config_lib.ConfigError, 'set one'):
      make_config('a', 'b', data_dir='c')
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 2)
    write_pair(token_dir, latent_dir, 's000', 0, suffix='_tokens.npz')  # s000.npz exists
    with self.assertRaisesRegex(data.DataError, 's000'):
      data.discover_samples(token_dir, latent_dir)


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
    token_dir, latent_dir = make_dirs(root, 20)
    train, val_factory = datasets(make_config(token_dir, latent_dir, val_ratio=0.25, eval_batch=2))
    _, expected_val = data.split_train_val(20, 0.25, seed=7)
    val_ids = [i for b in val_factory() for i in ids_of(b)]
    self.assertEqual(val_ids, list(expected_val[:4]))  # fixed order; 5th dropped (batch of 2)
    self.assertEqual(val_ids, [i for b in val_factory() for i in ids_of(b)])  # repeatable
    self.assertEqual([i for b in val_factory(max_batches=1) for i in ids_of(b)], val_ids[:2])
    with train:
      train_ids = {i for b in take(train, train.steps_per_epoch) for i in ids_of(b)}
    self.assertLen(train_ids, 12)  # 15 train samples, 3 whole batches of 4
    self.assertEmpty(train_ids & set(val_ids))


def _corrupt_truncated_npz(token_dir, latent_dir):
  path = os.path.join(token_dir, 's001_tokens.npz')
  with open(path, 'rb') as f:
    payload = f.read()
  with open(path, 'wb') as f:
    f.write(payload[: len(payload) // 2])
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
    ids, mask, _ = sample_arrays(1)
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
  too_long=(
    _rewrite_tokens(lambda ids, mask: dict(input_ids=np.r_[ids, 1], attention_mask=np.r_[mask, 1])),
    'length 9',
  ),
  mask_length=(_rewrite_tokens(lambda ids, mask: dict(input_ids=ids, attention_mask=mask[:5])), 'shape'),
  id_too_large=(
    _rewrite_tokens(lambda ids, mask: dict(input_ids=_set(ids, 3, VOCAB), attention_mask=mask)),
    'input_ids[3]',
  ),
  id_negative=(
    _rewrite_tokens(lambda ids, mask: dict(input_ids=_set(ids, 2, -1), attention_mask=mask)),
    'input_ids[2]',
  ),
  float_ids=(_rewrite_tokens(lambda ids, mask: dict(input_ids=ids.astype(np.float32), attention_mask=mask)), 'dtype'),
  mask_not_binary=(_rewrite_tokens(lambda ids, mask: dict(input_ids=ids, attention_mask=mask * 2)), '0/1'),
  all_padding=(_rewrite_tokens(lambda ids, mask: dict(input_ids=ids, attention_mask=mask * 0)), 'all zero'),
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
    token_dir, latent_dir = make_dirs(root, 4)
    path = corrupt(token_dir, latent_dir)
    with self.assertRaises(data.CorruptSampleError) as raised:
      train, _ = datasets(make_config(token_dir, latent_dir, batch=4))
      with train:
        next(train)  # one epoch of 4 = every sample, so the bad one is read
    self.assertIn(path, str(raised.exception))
    self.assertIn(what, str(raised.exception))

  def test_error_crosses_from_a_grain_worker_process(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 4)
    path = _rewrite_latent(np.full(LATENT_DIM, np.nan, np.float32))(token_dir, latent_dir)
    train, _ = datasets(make_config(token_dir, latent_dir, workers=1))
    with train, self.assertRaisesRegex(data.DataError, path):
      next(train)

  def test_skip_bad_files_replaces_and_counts_each_bad_sample_once(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 10)
    _corrupt_truncated_npy(token_dir, latent_dir)  # s001
    os.remove(os.path.join(latent_dir, 's004.npy'))  # s004 unpaired
    np.savez(os.path.join(token_dir, 's007_tokens.npz'), input_ids=np.ones(SEQ_LEN))  # no mask
    train, _ = datasets(make_config(token_dir, latent_dir, batch=3, skip=True))
    with train:
      self.assertEqual(train.num_skipped, 1)  # the unpaired file, found at listing
      # 9 paired samples -> 3 batches of 3 per epoch; over 4 epochs every sample is read several times.
      batches = take(train, 12)
    ids = [i for b in batches for i in ids_of(b)]
    self.assertLen(ids, 36)  # every batch is whole
    self.assertNoCommonElements(ids, [1, 4, 7])
    self.assertContainsSubset({0, 2, 3, 5, 6, 8, 9}, set(ids))
    self.assertEqual(train.num_skipped, 3)  # s001 and s007 met in every epoch, counted once
    for epoch in range(4):  # a replacement is another sample of the same epoch's order
      self.assertGreaterEqual(len(set(ids[9 * epoch : 9 * (epoch + 1)])), 7)

  def test_more_bad_samples_than_max_bad_fraction_stop_the_run(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 10)
    for i in (1, 2):
      np.save(os.path.join(latent_dir, f's{i:03d}.npy'), np.zeros(1, np.float32))
    ok, _ = datasets(make_config(token_dir, latent_dir, batch=5, skip=True, max_bad_fraction=0.2))
    with ok:
      take(ok, 4)  # 2 of 10 allowed
    self.assertEqual(ok.num_skipped, 2)
    stopped, _ = datasets(make_config(token_dir, latent_dir, batch=5, skip=True, max_bad_fraction=0.1))
    with stopped, self.assertRaisesRegex(data.DataError, r'2 of 10 samples are bad.*max_bad_fraction allows \(1\)'):
      take(stopped, 2)

  def test_all_bad_with_skipping_raises_instead_of_looping(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 4)
    for i in range(4):
      np.save(os.path.join(latent_dir, f's{i:03d}.npy'), np.zeros(1, np.float32))
    train, _ = datasets(make_config(token_dir, latent_dir, batch=2, skip=True, max_bad_fraction=1.0))
    with train, self.assertRaisesRegex(data.DataError, 'all 4 samples of the epoch are bad'):
      next(train)

  def test_io_error_is_retried_then_fatal_even_when_skipping(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 1)
    (files,), _ = data.discover_samples(token_dir, latent_dir)
    real_open = open
    failures = []

    def flaky_open(path, *args, **kwargs):
      if str(path).endswith('.npy') and len(failures) < 2:
        failures.append(path)
        raise OSError(5, 'Input/output error')
      return real_open(path, *args, **kwargs)

    with mock.patch.object(formats, 'IO_BACKOFF_S', 0.0), mock.patch('builtins.open', flaky_open):
      sample = data.read_sample(files, SPEC)  # two failures, then the third attempt reads it
    self.assertLen(failures, 2)
    np.testing.assert_array_equal(sample['latent'], sample_arrays(0)[2])
    broken = mock.patch('builtins.open', side_effect=OSError(5, 'Input/output error'))
    with (
      mock.patch.object(formats, 'IO_BACKOFF_S', 0.0),
      broken,
      self.assertRaisesRegex(data.DataIOError, r's000.npy: read failed 4 times'),
    ):
      data.read_sample(files, SPEC)
    self.assertFalse(issubclass(data.DataIOError, data.CorruptSampleError))  # so skipping never hides it


class ShardingTest(chex.TestCase):
  def test_process_shares_are_disjoint_and_cover_each_global_batch(self):
    root = _tmpdir(self)
    config = make_config(*make_dirs(root, 22), batch=4)
    single, _ = datasets(config)
    shards = [datasets(config, p, 2)[0] for p in range(2)]
    steps = single.steps_per_epoch
    self.assertEqual(steps, 5)  # 22 // 4: the incomplete last global batch is dropped
    epoch_ids = []
    for _ in range(2 * steps):  # two epochs
      whole = ids_of(next(single))
      parts = [ids_of(next(s)) for s in shards]
      self.assertLen(parts[0], 2)
      self.assertEmpty(set(parts[0]) & set(parts[1]))
      self.assertEqual(parts[0] + parts[1], whole)  # process p holds rows [p*b, (p+1)*b)
      epoch_ids.append(whole)
    for iterator in (single, *shards):
      iterator.close()
    first, second = sum(epoch_ids[:steps], []), sum(epoch_ids[steps:], [])
    self.assertLen(set(first), 20)  # no sample twice in an epoch
    self.assertNotEqual(first, second)  # reshuffled with seed + epoch

  def test_replacements_do_not_depend_on_the_process_count(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 12)
    for i in (0, 5, 6):
      np.save(os.path.join(latent_dir, f's{i:03d}.npy'), np.zeros(1, np.float32))
    config = make_config(token_dir, latent_dir, batch=4, skip=True)
    single, _ = datasets(config)
    shards = [datasets(config, p, 2)[0] for p in range(2)]
    for _ in range(6):
      self.assertEqual(ids_of(next(single)), sum((ids_of(next(s)) for s in shards), []))
    for iterator in (single, *shards):
      iterator.close()

  def test_global_batch_must_divide_by_process_count(self):
    config = make_config(batch=3)
    with self.assertRaisesRegex(ValueError, 'multiple of process_count'):
      datasets(config, 0, 2)


class StateTest(chex.TestCase, parameterized.TestCase):
  @parameterized.product(stop_at=[2, 5], skip=[False, True])
  def test_restore_reproduces_the_uninterrupted_batches(self, stop_at, skip):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 11)
    if skip:
      _rewrite_latent(np.full(LATENT_DIM, np.nan, np.float32))(token_dir, latent_dir)
    config = make_config(token_dir, latent_dir, batch=4, skip=skip)
    with datasets(config, 1, 2)[0] as uninterrupted:
      reference = take(uninterrupted, 8)  # 2 steps per epoch: stop_at 2 is an epoch boundary
    with datasets(config, 1, 2)[0] as interrupted:
      head = take(interrupted, stop_at)
      state = interrupted.get_state()
    self.assertEqual(state, json.loads(json.dumps(state)))  # what grain's handler writes
    with datasets(config, 1, 2)[0] as restored:
      restored.set_state(state)
      assert_batches_equal(head + take(restored, 8 - stop_at), reference)
    with datasets(config, 1, 2)[0] as from_step:  # no saved state: the position follows from the step
      from_step.start_at_step(stop_at)
      assert_batches_equal(head + take(from_step, 8 - stop_at), reference)

  @pytest.mark.slow  # two grain worker processes start (spawn + imports: 5-20 s on 2 cores)
  def test_worker_processes_give_the_same_batches_and_restore_exactly(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 11)
    _rewrite_latent(np.full(LATENT_DIM, np.nan, np.float32))(token_dir, latent_dir)
    in_process = make_config(token_dir, latent_dir, batch=4, skip=True)
    with datasets(in_process, 1, 2)[0] as uninterrupted:
      reference = take(uninterrupted, 7)
    workers = make_config(token_dir, latent_dir, batch=4, skip=True, workers=1)
    with datasets(workers, 1, 2)[0] as interrupted:
      head = take(interrupted, 3)
      state = interrupted.get_state()
    with datasets(workers, 1, 2)[0] as restored:
      restored.set_state(state)
      assert_batches_equal(head + take(restored, 4), reference)
      self.assertEqual(restored.num_skipped, 1)
    with datasets(in_process, 1, 2)[0] as fewer_workers:  # grain's state is per worker; the position is not
      fewer_workers.set_state(state)
      assert_batches_equal(head + take(fewer_workers, 4), reference)

  @pytest.mark.slow  # grain worker processes start (spawn + imports: 5-20 s on 2 cores)
  def test_position_is_set_under_any_worker_count(self):
    # grain cannot reposition an iterator whose workers run (set_next_index on its interleave):
    # init_from and a resume under another worker count set the position of such an iterator.
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 11)
    config = {w: make_config(token_dir, latent_dir, batch=4, workers=w) for w in (0, 2)}
    with datasets(config[0])[0] as uninterrupted:
      reference = take(uninterrupted, 7)
    with datasets(config[2])[0] as two_workers:
      head = take(two_workers, 3)
      state = two_workers.get_state()
      two_workers.start_at_step(5)  # after batches were read: a new position restarts the workers there
      assert_batches_equal(take(two_workers, 2), reference[5:7])
    with datasets(config[0])[0] as none:
      none.set_state(state)
      assert_batches_equal(head + take(none, 4), reference)
      zero_state = none.get_state()
    with datasets(config[2])[0] as again:
      again.set_state(zero_state)
      again.start_at_step(2)
      assert_batches_equal(take(again, 5), reference[2:7])

  def test_state_written_with_grains_per_worker_state_still_restores(self):
    root = _tmpdir(self)
    config = make_config(*make_dirs(root, 11), batch=4)
    with datasets(config)[0] as uninterrupted:
      reference = take(uninterrupted, 5)
      state = uninterrupted.get_state()
    old_state = {
      **state,
      'next_batch': 2,
      'num_workers': 2,
      'pipeline': {'workers_state': {}, 'iterations_to_skip': {}},
    }
    with datasets(config)[0] as restored:
      restored.set_state(old_state)
      assert_batches_equal(take(restored, 3), reference[2:5])

  def test_bad_sample_tally_is_restored(self):
    root = _tmpdir(self)
    token_dir, latent_dir = make_dirs(root, 8)
    np.save(os.path.join(latent_dir, 's003.npy'), np.zeros(1, np.float32))
    config = make_config(token_dir, latent_dir, batch=4, skip=True)
    with datasets(config)[0] as first:
      take(first, 2)
      state = first.get_state()
    self.assertEqual(first.num_skipped, 1)
    with datasets(config)[0] as second:
      second.set_state(state)
      take(second, 4)  # meets s003 twice more
      self.assertEqual(second.num_skipped, 1)

  def test_state_of_another_layout_is_refused_naming_both(self):
    root = _tmpdir(self)
    dirs = make_dirs(root, 8)
    with datasets(make_config(*dirs, batch=4))[0] as iterator:
      next(iterator)
      state = iterator.get_state()
    with (
      datasets(make_config(*dirs, batch=2))[0] as other,
      self.assertRaisesRegex(data.DataError, 'global_batch_size=4, this run has 2'),
    ):
      other.set_state(state)

  def test_order_position_of_a_step(self):
    self.assertEqual(data.order_position(0, 8, 5), (0, 0))
    self.assertEqual(data.order_position(7, 8, 5), (1, 16))


class SyntheticTest(chex.TestCase):
  def test_synthetic_batches_are_full_length_uniform_tokens_like_the_reference(self):
    config = make_config(batch=8, val_ratio=0.25, eval_batch=4)
    with datasets(config)[0] as train_a, datasets(config)[0] as train_b:
      batches = take(train_a, 3)
      assert_batches_equal(batches, take(train_b, 3))
    for batch in batches:
      ids, mask = batch['input_ids'], batch['attention_mask']
      self.assertEqual(ids.dtype, np.int32)
      self.assertEqual(mask.dtype, np.bool_)
      chex.assert_shape(batch['latent'], (8, LATENT_DIM))
      self.assertTrue(((ids >= 0) & (ids < VOCAB)).all())
      self.assertTrue(mask.all())  # no padding, as the reference's --synthetic batches
      self.assertTrue(np.isfinite(batch['latent']).all())
    all_ids = np.concatenate([b['input_ids'] for b in batches])
    self.assertGreater(len(np.unique(all_ids)), VOCAB // 2)  # uniform over the vocabulary
    val = list(datasets(config)[1]())
    self.assertLen(val, 4)  # 64 * 0.25 = 16 samples in batches of 4
    self.assertFalse(np.array_equal(val[0]['latent'], batches[0]['latent'][:4]))
    with datasets(make_config(batch=8, seed=8))[0] as other:
      self.assertFalse(np.array_equal(next(other)['latent'], batches[0]['latent']))


if __name__ == '__main__':
  pytest.main([__file__, '-q'])
