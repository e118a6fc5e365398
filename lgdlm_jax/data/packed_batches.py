"""Packed rows in grain: global batch j after a stream position planned (lgdlm_jax.data.packing), our rows decoded.

A packed batch (S = model.max_seq_len, K = data.max_segments_per_row, D = model.latent_dim):
  input_ids int32 [b,S] (pad id on padding), attention_mask bool [b,S] (True = a real token),
  segment_ids int32 [b,S] (k in 1..K for the row's k-th sample, 0 on padding; each sample's tokens
  contiguous, samples left to right, padding after the last), positions int32 [b,S] (0..len-1 in
  each sample, 0 on padding), latent float32 [b,K,D] (slot k-1: sample k's latent, zeros in empty
  slots), latent_mask bool [b,K], segment_lengths int32 [b,K] (0 in empty slots).

Bad samples: one found bad when it is decoded is replaced in its row by the next good sample of the
stream that fits the tokens it was planned to take (counted once, lgdlm_jax.data.bad_samples), so the
other rows, and other processes' rows, are unchanged.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from absl import logging
import grain
import ml_collections
import numpy as np

from lgdlm_jax.data import formats
from lgdlm_jax.data import sources as sources_lib
from lgdlm_jax.data.formats import CorruptSampleError
from lgdlm_jax.data.formats import DataError
from lgdlm_jax.data.packing import BadFound
from lgdlm_jax.data.packing import Plan
from lgdlm_jax.data.packing import Planner

Batch = dict[str, np.ndarray]
_KEPT_STARTS = 256  # planned batch starts remembered; grain asks for batches in about increasing order


class PackedPlans(grain.MapDataset):
  """Element j: the plan of the j-th global batch from stream position `start` (computed in order, cached)."""

  def __init__(self, planner: Planner, start: int):
    super().__init__()
    self.planner = planner
    self._starts = {0: start}  # batch -> its stream position, for the batches planned so far
    self._lock = threading.Lock()

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != '_lock'}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, _lock=threading.Lock())

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    with self._lock:
      known = max(j for j in self._starts if j <= index)
      plan = self.planner.plan(self._starts[known])
      for j in range(known + 1, index + 1):
        self._starts[j] = plan.next_start
        plan = self.planner.plan(plan.next_start)
      self._starts[index + 1] = plan.next_start
      if len(self._starts) > 2 * _KEPT_STARTS:
        self._starts = {j: s for j, s in self._starts.items() if j == 0 or j > index - _KEPT_STARTS}
    return plan

  def __str__(self) -> str:
    return f'PackedPlans(start={self._starts[0]})'


class DecodeRows(grain.transforms.Map):
  """A plan -> (this process's rows of the packed batch, bad samples met, the next batch's stream position)."""

  def __init__(
    self, source: sources_lib.Source, keys: np.ndarray, planner: Planner, *, rows: tuple[int, int], max_segments: int
  ):
    self._source = source
    self._keys = keys
    self._planner = planner
    self._first_row, self._num_rows = rows
    self._max_segments = max_segments

  def map(self, plan: Plan) -> tuple[Batch, BadFound, int]:
    spec, b, k = self._source.spec, self._num_rows, self._max_segments
    batch = {
      'input_ids': np.full((b, spec.seq_len), spec.pad_id, np.int32),
      'attention_mask': np.zeros((b, spec.seq_len), bool),
      'segment_ids': np.zeros((b, spec.seq_len), np.int32),
      'positions': np.zeros((b, spec.seq_len), np.int32),
      'latent': np.zeros((b, k, spec.latent_dim), np.float32),
      'latent_mask': np.zeros((b, k), bool),
      'segment_lengths': np.zeros((b, k), np.int32),
    }
    mine = np.flatnonzero((plan.rows >= self._first_row) & (plan.rows < self._first_row + b))
    bad: list[tuple[int, str]] = list(plan.bad)
    used = np.zeros(b, np.int64)
    raws = self._source.read_many(plan.indices[mine])
    for i, raw in zip(mine, raws):
      row = int(plan.rows[i]) - self._first_row
      ids, mask, latent = self._decode(int(plan.positions[i]), int(plan.indices[i]), raw, int(plan.lengths[i]), bad)
      slot, start, length = int(batch['latent_mask'][row].sum()), int(used[row]), len(ids)
      tokens = slice(start, start + length)
      batch['input_ids'][row, tokens] = ids
      batch['attention_mask'][row, tokens] = mask
      batch['segment_ids'][row, tokens] = slot + 1
      batch['positions'][row, tokens] = np.arange(length)
      batch['latent'][row, slot] = latent
      batch['latent_mask'][row, slot] = True
      batch['segment_lengths'][row, slot] = length
      used[row] += length
    return batch, tuple(bad), plan.next_start

  def _decode(self, position: int, index: int, raw: Any, length: int, bad: list[tuple[int, str]]) -> formats.Unpadded:
    """The sample's first `length` tokens and its latent; a bad one replaced by the next that fits."""
    for _ in range(self._planner.num_samples):
      try:
        ids, mask, latent = self._source.decode(raw)
        real = min(formats.real_length(mask), self._planner.seq_len)
        if real != length:
          raise CorruptSampleError(f'{self._source.name(index)}: {real} tokens, its recorded length is {length}')
        return ids[:length], mask[:length], latent
      except CorruptSampleError as e:
        if not self._planner.replaceable:
          raise
        bad.append((int(self._keys[index]), str(e)))
      position, index, length = self._planner.replacement(position, length)
      (raw,) = self._source.read_many([index])
    raise DataError(f'all {self._planner.num_samples} samples are bad; the first: {bad[0][1]}')


class PackedStream:
  """The packed-rows dataset of one process: planned global batches from any stream position, its rows decoded."""

  def __init__(self, planner: Planner, decode: DecodeRows):
    self.planner = planner
    self.num_samples = planner.num_samples
    self._decode = decode

  def from_position(self, position: int) -> grain.MapDataset:
    return PackedPlans(self.planner, position).map(self._decode)


def packed_stream(
  config: ml_collections.ConfigDict,
  source: sources_lib.Source,
  keys: np.ndarray,
  process_index: int,
  process_count: int,
  replace: bool,
) -> PackedStream:
  """This process's packed rows (data.packing); a shard's lengths are read (and checked) here, before any work."""
  global_batch_size, max_segments = config.training.train_batch_size, config.data.max_segments_per_row
  if global_batch_size % process_count:
    raise ValueError(f'global batch {global_batch_size} is not a multiple of process_count {process_count}')
  planner = Planner(
    source,
    keys,
    seed=config.training.seed,
    global_batch_size=global_batch_size,
    seq_len=config.model.max_seq_len,
    max_segments=max_segments,
    truncate=config.data.truncate_long_samples,
    replace=replace,
  )
  rows = global_batch_size // process_count
  decode = DecodeRows(source, keys, planner, rows=(process_index * rows, rows), max_segments=max_segments)
  logging.info(
    'Packed rows: first-fit, up to %d samples per row of %d tokens; validation batches stay one sample per row',
    max_segments,
    config.model.max_seq_len,
  )
  return PackedStream(planner, decode)
