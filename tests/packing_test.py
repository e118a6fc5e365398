"""Packed rows (data.packing): the batch's fields, the stream, long samples, both layouts, resume, processes."""

import collections
import json
import os

import jax
import numpy as np
import pytest

from lgdlm_jax import data
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.data import check
from lgdlm_jax.data import packed_writer
from lgdlm_jax.data import packing
from tests.helpers import datasets

NUM, S, K = 30, 12, 3
PACKED_KEYS = {'input_ids', 'attention_mask', 'segment_ids', 'positions', 'latent', 'latent_mask', 'segment_lengths'}


def _length(i):
  return 3 + (i * 7) % 8  # 3..10 tokens in the file, the last 2 of them padding: 1..8 real tokens


def _files(root, num=NUM, lengths=_length):
  token_dir, latent_dir = os.path.join(root, 'tok'), os.path.join(root, 'lat')
  os.makedirs(token_dir)
  os.makedirs(latent_dir)
  for i in range(num):
    datasets.write_pair(token_dir, latent_dir, f's{i:03d}', i, length=lengths(i))
  return token_dir, latent_dir


def _config(token_dir='', latent_dir='', data_dir='', *, batch=4, seq_len=S, **keys):
  keys = {'packing': True, 'max_segments_per_row': K, **keys}
  return datasets.make_config(token_dir, latent_dir, data_dir, batch=batch, seq_len=seq_len, **keys)


def _batches(config, steps, **kw):
  train, _ = datasets.datasets(config, **kw)
  with train:
    return datasets.take(train, steps), train.get_state()


def _segments(batch):
  """(row, slot, sample id, its tokens) of every segment, checking the layout of the packed batch."""
  found = []
  for row in range(len(batch['input_ids'])):
    ids, seg = batch['segment_ids'][row], batch['positions'][row]
    count = int(batch['latent_mask'][row].sum())
    assert count >= 1 and batch['latent_mask'][row, :count].all() and not batch['latent_mask'][row, count:].any()
    lengths = batch['segment_lengths'][row]
    assert (lengths[:count] > 0).all() and not lengths[count:].any()
    expected_ids = np.repeat(np.arange(1, count + 1), lengths[:count])  # contiguous, 1..n left to right
    used = len(expected_ids)
    np.testing.assert_array_equal(ids[:used], expected_ids)
    assert not ids[used:].any() and not seg[used:].any() and not batch['attention_mask'][row, used:].any()
    assert (batch['input_ids'][row, used:] == 0).all()  # the pad id
    np.testing.assert_array_equal(seg[:used], np.concatenate([np.arange(n) for n in lengths[:count]]))
    assert not batch['latent'][row, count:].any()
    start = 0
    for slot in range(count):
      tokens = slice(start, start + lengths[slot])
      sample = int(batch['latent'][row, slot, 0])
      found.append((row, slot, sample, batch['input_ids'][row, tokens], batch['attention_mask'][row, tokens]))
      start += lengths[slot]
  return found


def test_packed_batches_hold_each_sample_once_per_epoch_in_its_own_segment(tmp_path):
  config = _config(*_files(str(tmp_path)))
  batches, state = _batches(config, 8)
  seen = collections.Counter()
  for batch in batches:
    assert set(batch) == PACKED_KEYS
    assert batch['latent'].shape == (4, K, datasets.LATENT_DIM) and batch['input_ids'].shape == (4, S)
    for _, _, sample, ids, mask in _segments(batch):
      want_ids, want_mask, want_latent = datasets.sample_arrays(sample, _length(sample))
      real = _length(sample) - 2
      np.testing.assert_array_equal(ids, want_ids[:real])
      np.testing.assert_array_equal(mask, want_mask[:real].astype(bool))
      np.testing.assert_array_equal(batch['latent'][batch['latent'][:, :, 0] == sample][0], want_latent)
      seen[sample] += 1
  epoch, position = state['epoch'], state['position']
  assert epoch >= 1 and state['next_batch'] == 8
  ahead = set(packing.shuffled_order(NUM, 7, epoch)[:position].tolist())  # read once more in epoch `epoch`
  assert seen == {i: epoch + (i in ahead) for i in range(NUM)}


def test_first_fit_is_the_composition_and_a_sample_that_fits_no_row_starts_the_next_batch(tmp_path):
  config = _config(*_files(str(tmp_path)))
  (batch,), state = _batches(config, 1)
  order = packing.shuffled_order(NUM, 7, 0)
  room, count, rows = [S] * 4, [0] * 4, collections.defaultdict(list)
  position = 0
  while (
    row := next((r for r in range(4) if room[r] >= _length(order[position]) - 2 and count[r] < K), None)
  ) is not None:
    sample, length = int(order[position]), _length(order[position]) - 2
    room[row] -= length
    count[row] += 1
    rows[row].append(sample)
    position += 1
  assert (state['epoch'], state['position']) == (0, position)
  got = collections.defaultdict(list)
  for row, _, sample, _, _ in _segments(batch):
    got[row].append(sample)
  assert got == rows


def test_a_too_long_sample_is_an_error_naming_it_or_is_truncated_when_allowed(tmp_path):
  long_one = lambda i: 14 if i == 5 else 6  # noqa: E731 (12 real tokens > S = 10)
  token_dir, latent_dir = _files(str(tmp_path), num=8, lengths=long_one)
  with pytest.raises(
    data.DataError, match=r's005_tokens\.npz: 12 tokens > model\.max_seq_len 10.*truncate_long_samples'
  ):
    _batches(_config(token_dir, latent_dir, seq_len=10, batch=2), 4)
  batches, _ = _batches(_config(token_dir, latent_dir, seq_len=10, batch=2, truncate_long_samples=True), 4)
  segments = [s for batch in batches for s in _segments(batch) if s[2] == 5]
  assert segments, 'the truncated sample is trained on'
  for _, _, _, ids, _ in segments:
    np.testing.assert_array_equal(ids, datasets.sample_arrays(5, 14)[0][:10])
  unpacked = _config(token_dir, latent_dir, seq_len=10, batch=8, packing=False, truncate_long_samples=True)
  (batch,), _ = _batches(unpacked, 1)  # the key applies to unpacked rows too
  row = int(np.flatnonzero(batch['latent'][:, 0] == 5)[0])
  np.testing.assert_array_equal(batch['input_ids'][row], datasets.sample_arrays(5, 14)[0][:10])


def test_shards_give_the_batches_of_the_files_and_old_shards_ask_for_a_repack(tmp_path):
  token_dir, latent_dir = _files(str(tmp_path / 'files'))
  out = str(tmp_path / 'packed')
  packed_writer.pack(token_dir, latent_dir, out, records_per_shard=7)
  from_files, _ = _batches(_config(token_dir, latent_dir), 6)
  from_shards, _ = _batches(_config(data_dir=out), 6)
  datasets.assert_batches_equal(from_shards, from_files)
  lengths_file = os.path.join(out, 'shard-00001.lengths.npy')
  lengths = np.load(lengths_file)
  assert check.check(out).num_bad == 0
  np.save(lengths_file, lengths + 1)
  assert check.check(out).num_bad == 7  # `prepare_data check` compares every record with its stored length
  np.save(lengths_file, lengths)
  path = os.path.join(out, 'manifest.json')
  with open(path) as f:
    manifest = json.load(f)
  for shard in manifest['shards']:
    del shard['lengths']  # as written before the lengths arrays
  with open(path, 'w') as f:
    json.dump(manifest, f)
  with pytest.raises(data.DataError, match=r'manifest\.json: packed before per-sample lengths.*re-pack'):
    datasets.datasets(_config(data_dir=out))
  unpacked, _ = _batches(datasets.make_config(data_dir=out, seq_len=S), 1)  # unpacked runs still read them
  assert unpacked[0]['input_ids'].shape == (4, S)


def test_resume_from_a_state_or_from_a_step_alone_continues_the_same_batches(tmp_path):
  config = _config(*_files(str(tmp_path)))
  straight, _ = _batches(config, 9)
  first, state = _batches(config, 4)
  train, _ = datasets.datasets(config)
  with train:
    train.set_state(json.loads(json.dumps(state)))  # as grain's checkpoint handler stores it
    datasets.assert_batches_equal(first + datasets.take(train, 5), straight)
  train, _ = datasets.datasets(config)
  with train:
    train.start_at_step(4)  # a converted checkpoint: the packing of steps 0-3 is replayed from lengths
    datasets.assert_batches_equal(datasets.take(train, 5), straight[4:])


def test_the_checkpoint_saves_and_restores_the_packed_position(tmp_path):
  config = _config(*_files(str(tmp_path / 'data')))
  straight, _ = _batches(config, 5)
  state = {'w': np.zeros(2, np.float32)}
  manager = checkpoint.make_manager(str(tmp_path / 'run'), config)
  train, _ = datasets.datasets(config)
  with train:
    datasets.take(train, 3)
    checkpoint.save(manager, 3, state, train)
    saved = train.get_state()
  manager.wait_until_finished()
  manager.close()
  with open(tmp_path / 'run' / 'checkpoints' / '3' / checkpoint.DATA_ITEM / 'process_0-of-1.json') as f:
    assert json.load(f) == saved  # the stream position itself, not a replay from step 3
  manager = checkpoint.make_manager(str(tmp_path / 'run'), config)
  train, _ = datasets.datasets(config)
  with train:
    checkpoint.restore_latest(manager, {'w': jax.ShapeDtypeStruct((2,), np.float32)}, train)
    datasets.assert_batches_equal(datasets.take(train, 2), straight[3:])
  manager.close()


def test_two_processes_split_the_global_batch_and_share_its_position(tmp_path):
  config = _config(*_files(str(tmp_path)))
  whole, state = _batches(config, 5)
  halves = [_batches(config, 5, process_index=p, process_count=2) for p in (0, 1)]
  for step, batch in enumerate(whole):
    for key in PACKED_KEYS:
      np.testing.assert_array_equal(np.concatenate([h[0][step][key] for h in halves]), batch[key])
  assert all((h[1]['epoch'], h[1]['position']) == (state['epoch'], state['position']) for h in halves)
  _, saved_by_two = _batches(config, 3, process_index=1, process_count=2)
  train, _ = datasets.datasets(config)  # one process resumes what two saved: their position is the same
  with train:
    train.start_at_step(3, saved_by_two)
    datasets.assert_batches_equal(datasets.take(train, 2), whole[3:])


def test_a_bad_sample_is_replaced_in_its_row_and_counted(tmp_path):
  token_dir, latent_dir = _files(str(tmp_path))
  np.save(os.path.join(latent_dir, 's004.npy'), np.zeros(3, np.float32))  # found when decoded
  os.remove(os.path.join(token_dir, 's009_tokens.npz'))
  with open(os.path.join(token_dir, 's009_tokens.npz'), 'wb') as f:
    f.write(b'not a zip')  # found when planned
  train, _ = datasets.datasets(_config(token_dir, latent_dir, skip=True))
  with train:
    batches = datasets.take(train, 8)
    assert train.num_skipped == 2
  samples = {s[2] for batch in batches for s in _segments(batch)}
  assert 4 not in samples and 9 not in samples and len(samples) == NUM - 2
  few = _config(token_dir, latent_dir, skip=True, max_samples=10, batch=64, max_bad_fraction=0.5)
  (batch,), _ = _batches(few, 1)  # a batch spanning several epochs meets s009 several times: still one bad
  assert 9 not in {s[2] for s in _segments(batch)}


def test_validation_batches_stay_one_sample_per_row(tmp_path):
  config = _config(*_files(str(tmp_path)), val_ratio=0.2, eval_batch=2)
  _, val = datasets.datasets(config)
  batch = next(val())
  assert set(batch) == {'input_ids', 'attention_mask', 'latent'} and batch['latent'].shape == (2, datasets.LATENT_DIM)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(tmp_path):
  token_dir, latent_dir = _files(str(tmp_path))
  in_process, _ = _batches(_config(token_dir, latent_dir), 5)
  workers, state = _batches(_config(token_dir, latent_dir, workers=2), 5)
  datasets.assert_batches_equal(workers, in_process)
  assert state['next_batch'] == 5


class _Lengths:
  """A source of lengths alone: what the planner reads."""

  def __init__(self, lengths):
    self.lengths = lengths

  def __len__(self):
    return len(self.lengths)

  def sample_length(self, index):
    return int(self.lengths[index])

  def name(self, index):
    return f'sample {index}'


@pytest.mark.parametrize('rows,max_segments', [(1, 1), (3, 2), (5, 4), (8, 3)])
def test_planned_rows_are_first_fit_on_any_row_count(rows, max_segments):
  lengths = np.random.default_rng(rows).integers(1, 11, size=200)
  planner = packing.Planner(
    _Lengths(lengths),
    np.arange(200),
    seed=3,
    global_batch_size=rows,
    seq_len=10,
    max_segments=max_segments,
    truncate=False,
    replace=False,
  )
  start = 0
  for _ in range(30):  # across epochs
    plan = planner.plan(start)
    room, count, want, position = [10] * rows, [0] * rows, [], start
    while True:
      length = int(lengths[planner.index_at(position)])
      row = next((r for r in range(rows) if room[r] >= length and count[r] < max_segments), None)
      if row is None:
        break
      room[row], count[row] = room[row] - length, count[row] + 1
      want.append(row)
      position += 1
    assert plan.rows.tolist() == want and plan.next_start == position == start + len(want)
    assert set(plan.rows.tolist()) == set(range(rows))  # no row left empty
    start = position
