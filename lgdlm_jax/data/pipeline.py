"""The input pipeline on grain: a source -> this process's rows of each global batch, checkpointable.

Order: `training.train_batch_size` (B) and `eval_batch_size` are GLOBAL batch sizes. Epoch e's
order is `np.random.default_rng((training.seed, 1, e)).permutation(n)`, cut to whole global
batches (its last `n mod B` samples are dropped). Global batch k is positions [k*B, (k+1)*B) of
the epochs' orders laid end to end, and process p of P takes rows [p*b, (p+1)*b) of it, b = B / P.
So the order does not depend on the process count, and training step s always reads global batch
s: `order_position(s, B, steps_per_epoch)` is where a run that resumes at step s without a saved
iterator state (a checkpoint converted from PyTorch, or one saved by another number of processes)
starts reading. The order is a grain `MapDataset` whose element k is this process's sample
indices of global batch k (one numpy permutation per epoch: grain's own index shuffle costs about
20 us a sample in Python, more than decoding a packed one).

Bad samples: a corrupt sample at position j is replaced by the next good sample of the same
epoch's order (j+1, j+2, ..., wrapping around), so every step still gets whole batches, the rows of
every process line up with the global batch, and the position stays a function of the step; the
bad sample is counted once (lgdlm_jax.data.bad_samples). Without `data.skip_bad_files` a single
process stops at the first one; several processes replace it and all stop at the same step.

Packed rows (`data.packing`): lgdlm_jax.data.packing says how global batches are composed then;
the position is a stream position (epoch, position in its order), saved with the next global batch.

Reading and decoding run in grain: `data.num_workers` worker processes (0 = in the training
process, on grain's reader threads), `data.prefetch_batches` batches ahead. The iterator state of
every process (the next global batch plus the bad-sample tally; no per-worker state, so a resume
may change the worker count) is saved with the Orbax checkpoint by grain's own handler
(lgdlm_jax.checkpoints.manager).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import sys
from typing import Any

from absl import flags
from absl import logging
import grain
import jax
import ml_collections
import numpy as np

from lgdlm_jax.data import formats
from lgdlm_jax.data import packed_batches
from lgdlm_jax.data import packing
from lgdlm_jax.data import sources as sources_lib
from lgdlm_jax.data.bad_samples import BadSamples
from lgdlm_jax.data.formats import CorruptSampleError
from lgdlm_jax.data.formats import DataError

Batch = dict[str, np.ndarray]
BadFound = tuple[tuple[int, str], ...]  # (sample key, message) of each bad sample met


def order_position(step: int, global_batch_size: int, steps_per_epoch: int) -> tuple[int, int]:
  """(epoch, position in that epoch's order) of the first sample training step `step` reads."""
  epoch, batch_in_epoch = divmod(step, steps_per_epoch)
  return epoch, batch_in_epoch * global_batch_size


class GlobalOrder(grain.MapDataset):
  """Element k: the sample indices of this process's rows of global batch k (see the module docstring)."""

  def __init__(
    self, num_samples: int, *, global_batch_size: int, seed: int | None, process_index: int, process_count: int
  ):
    super().__init__()
    if global_batch_size <= 0 or global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} is not a positive multiple of process_count {process_count}')
    self.steps_per_epoch = num_samples // global_batch_size
    if self.steps_per_epoch == 0:
      raise DataError(f'{num_samples} samples cannot fill one global batch of {global_batch_size}')
    self.epoch_length = self.steps_per_epoch * global_batch_size
    self.batch_size = global_batch_size // process_count
    self._num_samples = num_samples
    self._global_batch_size = global_batch_size
    self._seed = seed
    self._first_row = process_index * self.batch_size
    self._cached: tuple[int, np.ndarray] | None = None

  def __len__(self) -> int:
    return sys.maxsize if self._seed is not None else self.steps_per_epoch  # seed None: one pass, in order

  def epoch_order(self, epoch: int) -> np.ndarray:
    cached = self._cached  # one read: grain's reader threads share this object
    if cached is None or cached[0] != epoch:
      cached = self._cached = (epoch, packing.shuffled_order(self._num_samples, self._seed, epoch))
    return cached[1]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, step = divmod(index, self.steps_per_epoch)
    start = step * self._global_batch_size + self._first_row
    return epoch, start, self.epoch_order(epoch)[start : start + self.batch_size]

  def __str__(self) -> str:
    return f'GlobalOrder(steps_per_epoch={self.steps_per_epoch}, batch_size={self.batch_size})'


class DecodeBatch(grain.transforms.Map):
  """Sample indices of a local batch -> the batch; replaces a corrupt sample (see the module docstring)."""

  def __init__(self, source: sources_lib.Source, keys: np.ndarray, order: GlobalOrder, replace: bool):
    self._source = source
    self._keys = keys
    self._order = order
    self._replace = replace

  def map(self, element: tuple[int, int, np.ndarray]) -> tuple[Batch, BadFound]:
    epoch, first_position, indices = element
    spec, rows = self._source.spec, len(indices)
    # Written in place rather than padded and stacked per sample: this loop is the loader's hot path.
    batch = {
      'input_ids': np.full((rows, spec.seq_len), spec.pad_id, np.int32),
      'attention_mask': np.zeros((rows, spec.seq_len), bool),
      'latent': np.empty((rows, spec.latent_dim), np.float32),
    }
    bad: list[tuple[int, str]] = []
    for row, (index, raw) in enumerate(zip(indices, self._source.read_many(indices))):
      ids, mask, latent = self._decode(int(index), raw, epoch, first_position + row, bad)
      batch['input_ids'][row, : len(ids)] = ids
      batch['attention_mask'][row, : len(mask)] = mask
      batch['latent'][row] = latent
    return batch, tuple(bad)

  def _decode(self, index: int, raw: Any, epoch: int, position: int, bad: list[tuple[int, str]]) -> formats.Unpadded:
    length = self._order.epoch_length
    for k in range(length):
      if k:
        index = int(self._order.epoch_order(epoch)[(position + k) % length])
        (raw,) = self._source.read_many([index])
      try:
        return self._source.decode(raw)
      except CorruptSampleError as e:
        if not self._replace:
          raise
        bad.append((int(self._keys[index]), str(e)))
    raise DataError(f'all {length} samples of the epoch are bad; the first: {bad[0][1]}')


def local_batches(
  source: sources_lib.Source,
  keys: np.ndarray,
  *,
  global_batch_size: int,
  seed: int | None,
  process_index: int,
  process_count: int,
  replace: bool,
) -> grain.MapDataset:
  """Element k: this process's rows of global batch k, decoded (seed None: one pass in index order)."""
  order = GlobalOrder(
    len(source),
    global_batch_size=global_batch_size,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
  )
  return order.map(DecodeBatch(source, keys, order, replace))


class TrainIterator(grain.DatasetIterator):
  """Infinite iterator over this process's batches; its state is the next global batch plus the bad-sample tally.

  The position is the only state: batch k is a pure function of k (GlobalOrder, DecodeBatch), so
  grain's iterator is built from `batches[k:]` when the first batch is asked for, and rebuilt when
  the position is set after that. Neither the worker nor the process count enters the saved state,
  so a checkpoint resumes under any of them (grain's own per-worker state cannot be repositioned
  once worker processes run).
  """

  def __init__(
    self,
    batches: grain.MapDataset | packed_batches.PackedStream,
    bad_samples: BadSamples,
    *,
    num_workers: int,
    prefetch: int,
    layout: dict[str, Any],
  ):
    super().__init__()
    self.steps_per_epoch = layout.get('steps_per_epoch')  # None for packed rows: it varies by epoch
    self._batches = batches
    self._bad_samples = bad_samples
    self._layout = layout
    self._num_workers = num_workers
    self._prefetch = prefetch
    self._next_batch = 0  # batches returned: the global batch the next one is
    self._position = 0  # packed rows: the stream position global batch _next_batch starts at
    self._iterator: grain.DatasetIterator | None = None  # built at _next_batch on first use

  @property
  def _packed(self) -> packed_batches.PackedStream | None:
    return self._batches if isinstance(self._batches, packed_batches.PackedStream) else None

  def _started(self) -> grain.DatasetIterator:
    if self._iterator is None:
      prefetch = self._prefetch
      packed = self._packed
      batches = self._batches[self._next_batch :] if packed is None else packed.from_position(self._position)
      dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=max(1, prefetch), prefetch_buffer_size=prefetch))
      if self._num_workers:
        if not flags.FLAGS.is_parsed():  # grain's worker start-up reads its absl flags (library use, tests)
          flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._num_workers))
      self._iterator = dataset.__iter__()
    return self._iterator

  @property
  def num_skipped(self) -> int:
    """Distinct bad samples met so far, unpaired token files included (for the log)."""
    return self._bad_samples.count

  def agree_on_bad_samples(self) -> None:
    """After every training step, on every process: shares bad samples, stops all together if too many."""
    self._bad_samples.agree()

  def __next__(self) -> Batch:
    element = next(self._started())
    if self._packed is None:
      batch, bad = element
    else:
      batch, bad, self._position = element
    self._next_batch += 1
    self._bad_samples.found(bad)
    return batch

  def get_state(self) -> dict[str, Any]:
    state = {'bad_samples': self._bad_samples.get_state(), 'next_batch': self._next_batch, **self._layout}
    if self._packed is not None:
      state['epoch'], state['position'] = divmod(self._position, self._packed.num_samples)
    return state

  def set_state(self, state: dict[str, Any]) -> None:
    for key, ours in self._layout.items():
      if state.get(key) != ours:
        raise DataError(
          f"the checkpoint's data-iterator state was saved with {key}={state.get(key)}, this run has "
          f'{ours}; resume with the same data and batch settings'
        )
    # A state written before the position alone was saved also holds grain's per-worker 'pipeline'
    # state; its next_batch is the same position.
    self._seek(int(state['next_batch']), self._saved_position(state))
    self._bad_samples.set_state(state['bad_samples'])

  def start_at_step(self, step: int, other_state: dict[str, Any] | None = None) -> None:
    """Reads from global batch `step` on (see order_position); keeps the agreed bad samples of other_state.

    Packed rows: another process count's state holds the same stream position, which is used; without
    one, the packing decisions of steps 0..step-1 are replayed from the samples' lengths.
    """
    packed, position = self._packed, None
    if packed is not None:
      if other_state is not None and other_state.get('next_batch') == step and 'position' in other_state:
        position = self._saved_position(other_state)
      else:
        logging.info('Packed rows: replaying the packing of %d global batches from sample lengths', step)
        position = packed.planner.replay(step)
    self._seek(step, position)
    if other_state is not None:
      self._bad_samples.set_state(other_state['bad_samples'], agreed_only=True)

  def _saved_position(self, state: dict[str, Any]) -> int | None:
    if self._packed is None:
      return None
    return int(state['epoch']) * self._packed.num_samples + int(state['position'])

  def _seek(self, step: int, position: int | None = None) -> None:
    position = self._position if position is None else position
    if step != self._next_batch or position != self._position:
      self.close()  # the next batch starts a new grain iterator (and its workers) there
    self._next_batch, self._position = step, position

  def close(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def __enter__(self) -> TrainIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _log_truncation(found: sources_lib.Sources, seq_len: int) -> None:
  counts = [
    int(np.count_nonzero(source.load_lengths() > seq_len))
    for source in (found.train, found.val)
    if source is not None and hasattr(source, 'load_lengths') and source.has_lengths()
  ]
  count = f'{sum(counts)} samples, by the stored lengths' if counts else 'per-sample files: not counted in advance'
  logging.info('data.truncate_long_samples: samples longer than %d tokens are cut to it (%s)', seq_len, count)


def make_datasets(
  config: ml_collections.ConfigDict, *, process_index: int | None = None, process_count: int | None = None
) -> tuple[TrainIterator, Callable[..., Iterator[Batch]] | None]:
  """Returns (train iterator, val batches factory or None).

  `val_batches(max_batches=None)` yields one pass over the validation split in fixed order, in
  whole global `eval_batch_size` batches (the remainder is dropped so every process runs the same
  number of eval steps), stopping early after `max_batches`. The factory is None when there are no
  validation samples or too few for one eval batch.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  data, training = config.data, config.training
  found = sources_lib.open_sources(config)
  bad_samples = BadSamples(
    found.num_samples,
    skip=data.skip_bad_files,
    max_fraction=data.max_bad_fraction,
    process_count=process_count,
    unpaired=found.unpaired,
  )
  # A lone process can stop at the first bad sample itself; several must agree first (bad_samples).
  replace = data.skip_bad_files or process_count > 1
  common = dict(process_index=process_index, process_count=process_count, replace=replace)
  train_keys, val_keys = found.keys
  layout: dict[str, Any] = dict(
    process_count=process_count,
    process_index=process_index,
    num_samples=len(found.train),
    global_batch_size=training.train_batch_size,
    seed=training.seed,
  )
  if data.truncate_long_samples:
    _log_truncation(found, config.model.max_seq_len)
  if data.packing:
    layout.update(packing=True, seq_len=config.model.max_seq_len, max_segments_per_row=data.max_segments_per_row)
    batches = packed_batches.packed_stream(config, found.train, train_keys, process_index, process_count, replace)
  else:
    layout['steps_per_epoch'] = len(found.train) // training.train_batch_size
    batches = local_batches(
      found.train, train_keys, global_batch_size=training.train_batch_size, seed=training.seed, **common
    )
  train = TrainIterator(
    batches, bad_samples, num_workers=data.num_workers, prefetch=data.prefetch_batches, layout=layout
  )
  eval_batch_size = training.eval_batch_size
  if found.val is None or len(found.val) < eval_batch_size:
    return train, None

  def val_batches(max_batches: int | None = None) -> Iterator[Batch]:
    batches = local_batches(found.val, val_keys, global_batch_size=eval_batch_size, seed=None, **common)
    num_batches = len(batches) if max_batches is None else min(len(batches), max_batches)
    # In the training process: a pass is short and the generator may be abandoned part-way.
    for batch, bad in batches[:num_batches].to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)):
      bad_samples.found(bad)
      yield batch

  return train, val_batches
