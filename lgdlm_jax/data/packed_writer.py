"""Per-sample token/latent files -> packed ArrayRecord shards plus a manifest.

    python -m lgdlm_jax.prepare_data pack --from DATA_DIR --out PACKED_DIR
    python -m lgdlm_jax.prepare_data pack --token_dir T --latent_dir L --out PACKED_DIR

A packed directory holds `shard-NNNNN.array_record` files (one record per sample, group size 1 for
random access, in the sorted-name order the per-sample loader uses, so sample i is the same in
both layouts), beside each `shard-NNNNN.lengths.npy` (each record's real length, which packed rows
read at start-up), and `manifest.json`: counts, the token dtype, the latent size, the longest sample,
the largest token id, the vocabulary and special ids when known (from `--vocab_size` or the
source's `dataset.json`), a CRC-32 and size per shard, and the samples left out. Every sample is
validated on the way; a bad one fails the pack (all of them are listed) unless `skip_bad_files`,
which leaves it out and records it. `tokenizer.json` and `dataset.json` are copied along.
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
import json
import os
import shutil
import zlib

from absl import logging
from array_record.python import array_record_module
import numpy as np
import tqdm

from lgdlm_jax.data import formats
from lgdlm_jax.data import packed_reader
from lgdlm_jax.data import sources
from lgdlm_jax.data.formats import CorruptSampleError
from lgdlm_jax.data.formats import DataError

RECORDS_PER_SHARD = 100_000
# group_size:1 is what random access needs (grain refuses larger groups' read cost); records are
# small and mostly incompressible one at a time, so they are stored uncompressed.
WRITER_OPTIONS = 'group_size:1,uncompressed'
MAX_LISTED = 100  # excluded samples named in the manifest
COPIED_FILES = ('tokenizer.json', 'dataset.json')


def shard_name(index: int) -> str:
  return f'shard-{index:05d}.array_record'


def lengths_name(shard_file: str) -> str:
  return shard_file.removesuffix('.array_record') + '.lengths.npy'


def file_crc32(path: str, chunk: int = 1 << 22) -> str:
  crc = 0
  with open(path, 'rb') as f:
    while block := f.read(chunk):
      crc = zlib.crc32(block, crc)
  return f'{crc:08x}'


@dataclasses.dataclass
class ShardWriter:
  """Appends validated samples to numbered shards and writes the manifest at `close`."""

  out_dir: str
  token_dtype: str
  latent_dim: int
  records_per_shard: int = RECORDS_PER_SHARD
  vocab_size: int | None = None
  pad_token_id: int | None = None
  mask_token_id: int | None = None

  def __post_init__(self):
    os.makedirs(self.out_dir, exist_ok=True)
    self._shards: list[dict] = []
    self._writer = None
    self._lengths: list[int] = []  # real lengths of the open shard's records
    self._max_length = 0
    self._max_token_id = -1
    self.excluded: list[dict[str, str]] = []
    self.num_excluded = 0

  def write(self, name: str, ids: np.ndarray, mask: np.ndarray, latent: np.ndarray) -> None:
    if self._writer is None:
      path = os.path.join(self.out_dir, shard_name(len(self._shards)))
      self._writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
      self._shards.append({'file': os.path.basename(path), 'num_samples': 0})
    self._writer.write(formats.encode_record(name, ids, mask, latent, self.token_dtype))
    self._lengths.append(formats.real_length(mask))
    self._shards[-1]['num_samples'] += 1
    self._max_length = max(self._max_length, len(ids))
    self._max_token_id = max(self._max_token_id, int(ids.max()))
    if self._shards[-1]['num_samples'] == self.records_per_shard:
      self._close_shard()

  def exclude(self, name: str, reason: str) -> None:
    self.num_excluded += 1
    if len(self.excluded) < MAX_LISTED:
      logging.warning('Bad sample: %s', reason)
      self.excluded.append({'name': name, 'reason': reason})

  def _close_shard(self) -> None:
    self._writer.close()
    self._writer = None
    shard = self._shards[-1]
    path = os.path.join(self.out_dir, shard['file'])
    shard.update(crc32=file_crc32(path), bytes=os.path.getsize(path), lengths=lengths_name(shard['file']))
    np.save(os.path.join(self.out_dir, shard['lengths']), np.asarray(self._lengths, np.uint32))
    self._lengths = []

  def close(self) -> packed_reader.Manifest:
    if self._writer is not None:
      self._close_shard()
    num_samples = sum(s['num_samples'] for s in self._shards)
    if not num_samples:
      raise DataError(f'{self.out_dir}: no good sample to pack')
    manifest = packed_reader.Manifest(
      num_samples=num_samples,
      shards=tuple(self._shards),
      token_dtype=self.token_dtype,
      latent_dim=self.latent_dim,
      max_length=self._max_length,
      max_token_id=self._max_token_id,
      vocab_size=self.vocab_size,
      pad_token_id=self.pad_token_id,
      mask_token_id=self.mask_token_id,
      num_excluded=self.num_excluded,
      excluded=tuple(self.excluded),
    )
    with open(os.path.join(self.out_dir, packed_reader.MANIFEST), 'w') as f:
      f.write(manifest.to_json())
    return manifest

  def discard(self) -> None:
    """Removes what was written (a failed pack leaves no half dataset that looks complete)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    for shard in self._shards:
      for file in (shard['file'], shard.get('lengths')):
        if file and os.path.exists(os.path.join(self.out_dir, file)):
          os.remove(os.path.join(self.out_dir, file))


def token_dtype_for(vocab_size: int | None) -> str:
  return 'uint16' if vocab_size is not None and vocab_size <= 2**16 else 'int32'


def read_dataset_info(directory: str) -> dict:
  """The `dataset.json` prepare_data writes (vocabulary, special ids, sizes), or {}."""
  path = os.path.join(directory, 'dataset.json')
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8', errors='replace') as f:
    text = f.read()
  try:
    info = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(info, dict):
    raise DataError(f'{path}: holds a JSON {type(info).__name__}, expected an object')
  return info


def _first_latent_dim(files: Iterable[formats.SampleFiles]) -> int:
  for sample_files in files:
    try:
      return formats.check_latent(
        formats.read_latent_file(sample_files.latent_path), sample_files.latent_path, None
      ).shape[0]
    except CorruptSampleError:
      continue
  raise DataError('no readable latent file to take the latent size from')


def pack(
  token_dir: str,
  latent_dir: str,
  out_dir: str,
  *,
  info_dir: str | None = None,
  vocab_size: int | None = None,
  latent_dim: int | None = None,
  skip_bad_files: bool = False,
  records_per_shard: int = RECORDS_PER_SHARD,
) -> packed_reader.Manifest:
  """Packs every pair of token_dir/latent_dir into out_dir; see the module docstring."""
  if packed_reader.is_packed(out_dir):
    raise DataError(f'{out_dir} already holds a packed dataset ({packed_reader.MANIFEST}); choose another --out')
  info = read_dataset_info(info_dir) if info_dir else {}
  vocab_size = vocab_size or info.get('vocab_size')
  files, unpaired = sources.discover_samples(token_dir, latent_dir, skip_bad_files=True)
  latent_dim = latent_dim or info.get('latent_dim') or _first_latent_dim(files)
  writer = ShardWriter(
    out_dir,
    token_dtype_for(vocab_size),
    latent_dim,
    records_per_shard,
    vocab_size,
    info.get('pad_token_id'),
    info.get('mask_token_id'),
  )
  for path in unpaired:
    writer.exclude(os.path.basename(path), f'{path}: no latent partner in {latent_dir}')
  for sample_files in tqdm.tqdm(files, desc='packing', mininterval=5, disable=None):
    try:
      ids, mask, latent = formats.read_file_pair(
        sample_files, max_len=None, vocab_size=vocab_size, latent_dim=latent_dim
      )
    except CorruptSampleError as e:
      writer.exclude(sample_files.name, str(e))
      continue
    writer.write(sample_files.name, ids, mask, latent)
  if writer.num_excluded and not skip_bad_files:
    writer.discard()
    raise DataError(
      f'{writer.num_excluded} bad samples in {token_dir} (listed above; the first: '
      f'{writer.excluded[0]["reason"]}); nothing was packed: fix them, or pass --skip_bad_files '
      'to leave them out'
    )
  manifest = writer.close()
  for name in COPIED_FILES:
    if info_dir and os.path.isfile(os.path.join(info_dir, name)):
      shutil.copyfile(os.path.join(info_dir, name), os.path.join(out_dir, name))
  logging.info(
    'Packed %d samples into %d shards in %s (%d left out)',
    manifest.num_samples,
    len(manifest.shards),
    out_dir,
    manifest.num_excluded,
  )
  return manifest
