"""Reading a packed directory (written by lgdlm_jax.data.packed_writer): its manifest, and its samples.

A packed directory holds `shard-NNNNN.array_record` files, one record per sample (see
lgdlm_jax.data.formats.encode_record), beside each a `shard-NNNNN.lengths.npy` (uint32, each
record's formats.real_length, for packed rows: read at start-up, so nothing scans the records), and
`manifest.json`, which lists them in sample order. Directories packed before the lengths arrays
existed still train unpacked; `data.packing` asks for a re-pack.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import os
from typing import Any

from array_record.python import array_record_module
import numpy as np

from lgdlm_jax.data import formats
from lgdlm_jax.data.formats import CorruptSampleError
from lgdlm_jax.data.formats import DataError
from lgdlm_jax.data.formats import SampleSpec

MANIFEST = 'manifest.json'
FORMAT = 'lgdlm_jax.packed/1'


@dataclasses.dataclass(frozen=True)
class Manifest:
  """What `manifest.json` of a packed directory records (see lgdlm_jax.data.packed_writer)."""

  num_samples: int
  shards: tuple[dict[str, Any], ...]  # {'file', 'num_samples', 'crc32', 'bytes'} in sample order
  token_dtype: str
  latent_dim: int
  max_length: int
  max_token_id: int
  vocab_size: int | None = None
  pad_token_id: int | None = None
  mask_token_id: int | None = None
  num_excluded: int = 0
  excluded: tuple[dict[str, str], ...] = ()  # the first excluded samples: {'name', 'reason'}
  format: str = FORMAT

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)


def is_packed(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, MANIFEST))


def read_manifest(directory: str) -> Manifest:
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path) as f:
      fields = json.load(f)
    manifest = Manifest(**{**fields, 'shards': tuple(fields['shards']), 'excluded': tuple(fields['excluded'])})
  except (json.JSONDecodeError, TypeError, KeyError) as e:
    raise DataError(f'{path}: not a packed-dataset manifest ({type(e).__name__}: {e})') from e
  if manifest.format != FORMAT:
    raise DataError(f'{path}: format {manifest.format!r}, this version reads {FORMAT!r}')
  if sum(shard['num_samples'] for shard in manifest.shards) != manifest.num_samples:
    raise DataError(
      f'{path}: the shards hold {sum(s["num_samples"] for s in manifest.shards)} samples, '
      f'num_samples says {manifest.num_samples}'
    )
  return manifest


def check_manifest_fits(manifest: Manifest, spec: SampleSpec, directory: str, mask_token_id: int) -> None:
  """The checks the packed samples need against the config, all of them before training starts."""
  problems = []
  if manifest.latent_dim != spec.latent_dim:
    problems.append(f'latent size {manifest.latent_dim} != model.latent_dim {spec.latent_dim}')
  if manifest.max_length > spec.seq_len and not spec.truncate:
    problems.append(f'longest sample has {manifest.max_length} tokens > model.max_seq_len {spec.seq_len}')
  if manifest.max_token_id >= spec.vocab_size:
    problems.append(f'token id {manifest.max_token_id} outside model.vocab_size {spec.vocab_size}')
  for key, ours in (('pad_token_id', spec.pad_id), ('mask_token_id', mask_token_id)):
    theirs = getattr(manifest, key)
    if theirs is not None and theirs != ours:
      problems.append(f'{key} {theirs} != tokenizer.{key} {ours}')
  if problems:
    raise DataError(f'{os.path.join(directory, MANIFEST)}: ' + '; '.join(problems))


class PackedSource:
  """Samples of a packed directory (ArrayRecord shards); `indices` selects a split of them.

  The shards are read with ArrayRecord's own reader, one `read(positions)` call per shard and
  batch: per-record calls, and grain's ArrayRecordDataSource, cost several times as much per record
  (README, "Data at scale").
  """

  def __init__(self, directory: str, manifest: Manifest, spec: SampleSpec, indices: np.ndarray):
    self.spec = spec
    self._directory = directory
    self._manifest = manifest
    self._indices = np.asarray(indices, np.int64)
    self._paths = [os.path.join(directory, shard['file']) for shard in manifest.shards]
    self._shard_starts = np.cumsum([0] + [s['num_samples'] for s in manifest.shards])
    self._readers: dict[int, Any] = {}  # opened on first use, in the process that reads
    self._lengths: np.ndarray | None = None  # load_lengths

  def load_lengths(self) -> np.ndarray:
    """The real length of each sample of this split, from the shards' lengths arrays (DataError if absent)."""
    if self._lengths is None:
      manifest_path = os.path.join(self._directory, MANIFEST)
      parts = []
      for shard, path in zip(self._manifest.shards, self._paths):
        if 'lengths' not in shard:
          raise DataError(
            f'{manifest_path}: packed before per-sample lengths were stored (data.packing needs them); '
            're-pack it with `python -m lgdlm_jax.prepare_data pack`'
          )
        lengths_path = os.path.join(self._directory, shard['lengths'])
        try:
          lengths = np.load(lengths_path, allow_pickle=False)
        except (OSError, ValueError) as e:
          raise DataError(f'{lengths_path}: cannot read the lengths array ({type(e).__name__}: {e})') from e
        if lengths.shape != (shard['num_samples'],) or not np.issubdtype(lengths.dtype, np.integer):
          raise DataError(
            f'{lengths_path}: lengths {lengths.dtype}{list(lengths.shape)}, expected [{shard["num_samples"]}] '
            f'integers for {path}'
          )
        parts.append(lengths)
      self._lengths = np.concatenate(parts).astype(np.int64)[self._indices]
    return self._lengths

  def has_lengths(self) -> bool:
    return all('lengths' in shard for shard in self._manifest.shards)

  def sample_length(self, index: int) -> int:
    return int(self.load_lengths()[index])

  def name(self, index: int) -> str:
    return self._where(int(self._indices[index]))

  def __getstate__(self) -> dict[str, Any]:  # grain's worker processes open their own readers
    return {**self.__dict__, '_readers': {}}

  def __len__(self) -> int:
    return len(self._indices)

  def read_many(self, indices: Sequence[int]) -> list[tuple[int, bytes]]:
    record_indices = self._indices[np.asarray(indices, np.int64)]
    shards = np.searchsorted(self._shard_starts, record_indices, side='right') - 1
    records: list[bytes] = [b''] * len(record_indices)
    for shard in np.unique(shards):
      rows = np.flatnonzero(shards == shard)
      positions = (record_indices[rows] - self._shard_starts[shard]).tolist()
      read = formats.with_retries(
        lambda: self._reader(int(shard)).read(positions),  # noqa: B023 (called at once)
        self._paths[shard],
      )
      for row, record in zip(rows, read):
        records[row] = record
    return list(zip(record_indices.tolist(), records))

  def _reader(self, shard: int) -> Any:
    if shard not in self._readers:
      # No read-ahead: batches are random records, read-ahead would fetch bytes nobody reads.
      self._readers[shard] = array_record_module.ArrayRecordReader(self._paths[shard], 'readahead_buffer_size:0')
    return self._readers[shard]

  def decode(self, raw: tuple[int, bytes]) -> formats.Unpadded:
    # Packing validated the values; the manifest was checked against the config at start-up.
    record_index, record = raw
    try:
      _, ids, mask, latent = formats.decode_record(
        record, token_dtype=self._manifest.token_dtype, latent_dim=self._manifest.latent_dim
      )
    except CorruptSampleError as e:
      raise CorruptSampleError(f'{self._where(record_index)}: {e}') from None
    if self.spec.truncate:
      return ids[: self.spec.seq_len], mask[: self.spec.seq_len], latent
    if len(ids) > self.spec.seq_len:  # the manifest's max_length was checked; a record may still lie
      raise CorruptSampleError(
        f'{self._where(record_index)}: {len(ids)} tokens > model.max_seq_len {self.spec.seq_len}'
      )
    return ids, mask, latent

  def _where(self, record_index: int) -> str:
    shard = int(np.searchsorted(self._shard_starts, record_index, side='right')) - 1
    return f'{self._paths[shard]} record {record_index - self._shard_starts[shard]}'
