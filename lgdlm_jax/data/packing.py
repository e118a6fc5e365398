"""Packed rows (`data.packing`): which samples go into which row of each global batch, from their lengths alone.

The stream: epoch e's order is the same permutation of the n training samples the unpadded
pipeline uses (`shuffled_order`), and the epochs' orders are laid end to end, so stream position
g is sample `order(g // n)[g % n]`; no sample is dropped at an epoch's end (a global batch may
span two epochs).

A global batch of B rows (S = model.max_seq_len tokens, at most K = data.max_segments_per_row
samples each) is filled first-fit from the stream position where it starts: each next sample goes
to the first row with room for its length and fewer than K samples; the first sample that fits no
row starts the next global batch. Every row therefore holds at least one sample, a batch takes a
contiguous run of the stream, and its composition is a function of the order and the lengths only:
every process plans the whole global batch (lengths are cheap) and decodes only its own rows, so
the batches do not depend on the process or worker count, and (epoch, position) of the next batch
is the whole state a resume needs.

A sample's length is formats.real_length (its trailing padding is dropped). One longer than S is
an error naming it, or is cut to S with `data.truncate_long_samples`. A sample whose token file
cannot be read while planning (per-sample files: the packer reads each token file's mask when it
first reaches it) is left out of the stream and reported as bad, like a replaced sample.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np

from lgdlm_jax.data import sources as sources_lib
from lgdlm_jax.data.formats import CorruptSampleError
from lgdlm_jax.data.formats import DataError

BadFound = tuple[tuple[int, str], ...]  # (sample key, message) of each bad sample met
_UNKNOWN = -1
_BAD = -2


def shuffled_order(num_samples: int, seed: int | None, epoch: int) -> np.ndarray:
  """Epoch `epoch`'s order of the samples (seed None: index order), shared with the unpacked pipeline."""
  if seed is None:
    return np.arange(num_samples)
  return np.random.default_rng((seed, sources_lib.SHUFFLE_TAG, epoch)).permutation(num_samples)


@dataclasses.dataclass(frozen=True)
class Plan:
  """One global batch: its samples in stream order, with the row each goes to and its (capped) length."""

  start: int  # stream position of the first sample
  next_start: int  # stream position of the next global batch
  positions: np.ndarray  # int64 [m]: stream position of each sample (bad ones skipped)
  indices: np.ndarray  # int64 [m]: source index of each sample
  rows: np.ndarray  # int64 [m]: row of the global batch
  lengths: np.ndarray  # int64 [m]: tokens the sample takes in its row (<= S)
  bad: BadFound  # token files found bad while planning this batch


class _OpenRows:
  """First-fit over the rows of one global batch: the first row with room for a sample, in O(log B).

  A max-tree over the rows' room (-1 once a row holds max_segments samples): the search goes left
  wherever the left subtree has room enough, which is the first such row.
  """

  def __init__(self, rows: int, seq_len: int, max_segments: int):
    self._leaves = 1 << max(rows - 1, 0).bit_length()
    self._tree = [-1] * (2 * self._leaves)
    self._tree[self._leaves : self._leaves + rows] = [seq_len] * rows
    for node in range(self._leaves - 1, 0, -1):
      self._tree[node] = max(self._tree[2 * node], self._tree[2 * node + 1])
    self._count = [0] * rows
    self._max_segments = max_segments

  def place(self, length: int) -> int | None:
    """The row the sample goes to (its room and count taken), or None when no row has room for it."""
    tree = self._tree
    if tree[1] < length:
      return None
    node = 1
    while node < self._leaves:
      node = 2 * node if tree[2 * node] >= length else 2 * node + 1
    row = node - self._leaves
    self._count[row] += 1
    tree[node] = tree[node] - length if self._count[row] < self._max_segments else -1
    node //= 2
    while node:
      left, right = tree[2 * node], tree[2 * node + 1]
      room = left if left >= right else right
      if tree[node] == room:
        break  # nothing above changes
      tree[node] = room
      node //= 2
    return row


class Planner:
  """Plans global batches from stream positions; thread-safe (grain's reader threads share it)."""

  def __init__(
    self,
    source: sources_lib.Source,
    keys: np.ndarray,
    *,
    seed: int,
    global_batch_size: int,
    seq_len: int,
    max_segments: int,
    truncate: bool,
    replace: bool,
  ):
    self.num_samples = len(source)
    self.seq_len = seq_len
    self._source = source
    self._keys = keys
    self._seed = seed
    self._rows = global_batch_size
    self._max_segments = max_segments
    self._truncate = truncate
    self.replaceable = replace
    # Known up front for shards (their lengths arrays), else filled as the packer reaches each sample.
    known = getattr(source, 'load_lengths', None)
    self._lengths = np.array(known(), np.int64) if known else np.full(self.num_samples, _UNKNOWN, np.int64)
    self._bad_messages: dict[int, str] = {}
    self._order: tuple[int, list[int]] | None = None
    self._lock = threading.Lock()

  def __getstate__(self) -> dict[str, Any]:  # grain's worker processes get their own lock
    return {k: v for k, v in self.__dict__.items() if k != '_lock'}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, _lock=threading.Lock())

  def index_at(self, position: int) -> int:
    epoch, offset = divmod(position, self.num_samples)
    if self._order is None or self._order[0] != epoch:
      self._order = (epoch, shuffled_order(self.num_samples, self._seed, epoch).tolist())
    return self._order[1][offset]

  def length(self, index: int) -> int:
    """The sample's real length, or _BAD; read from the source the first time (per process)."""
    if self._lengths[index] == _UNKNOWN:
      try:
        self._lengths[index] = self._source.sample_length(index)
      except CorruptSampleError as e:
        if not self.replaceable:
          raise
        self._lengths[index] = _BAD
        self._bad_messages[index] = str(e)
    return int(self._lengths[index])

  def usable_length(self, index: int) -> int:
    """The tokens sample `index` takes in a row, or _BAD; a too-long sample is an error naming it."""
    length = self.length(index)
    if length > self.seq_len:
      if not self._truncate:
        raise DataError(
          f'{self._source.name(index)}: {length} tokens > model.max_seq_len {self.seq_len} '
          '(set data.truncate_long_samples=True to cut such samples)'
        )
      return self.seq_len
    return length

  def plan(self, start: int) -> Plan:
    with self._lock:
      return self._plan(start)

  def _plan(self, start: int) -> Plan:
    open_rows = _OpenRows(self._rows, self.seq_len, self._max_segments)
    positions, indices, rows, lengths, bad = [], [], [], [], []
    position, bad_in_a_row = start, 0
    while True:
      index = self.index_at(position)
      length = self.usable_length(index)
      if length == _BAD:
        bad.append((int(self._keys[index]), self._bad_messages[index]))
        bad_in_a_row += 1
        if bad_in_a_row >= self.num_samples:
          raise DataError(f'all {self.num_samples} samples are bad; the first: {bad[0][1]}')
        position += 1
        continue
      bad_in_a_row = 0
      row = open_rows.place(length)
      if row is None:
        break
      positions.append(position)
      indices.append(index)
      rows.append(row)
      lengths.append(length)
      position += 1
    as_array = lambda values: np.asarray(values, np.int64)  # noqa: E731
    return Plan(start, position, as_array(positions), as_array(indices), as_array(rows), as_array(lengths), tuple(bad))

  def replacement(self, position: int, max_length: int) -> tuple[int, int, int]:
    """(position, index, length) of the first sample after `position` that fits max_length tokens and is not
    known to be bad: what replaces a sample found bad when it is decoded."""
    with self._lock:
      for candidate in range(position + 1, position + self.num_samples):
        index = self.index_at(candidate)
        length = self.usable_length(index)
        if 0 < length <= max_length:
          return candidate, index, length
    raise DataError(f'no good sample of at most {max_length} tokens is left to replace a bad one')

  def replay(self, num_batches: int) -> int:
    """The stream position of global batch `num_batches` (planning every batch before it from lengths)."""
    position = 0
    for _ in range(num_batches):
      position = self.plan(position).next_start
    return position
