"""A whole dataset validated up front: every file or record readable, shapes, id range, finite latents, masks.

    python -m lgdlm_jax.prepare_data check DIR             # a data_dir (tokens/train, ...) or a packed dir
    python -m lgdlm_jax.prepare_data check --token_dir T --latent_dir L

The limits come from the flags (`--vocab_size`, `--seq_len`, `--latent_dim`), else from the
dataset's `dataset.json` or packed manifest; a latent size still unknown is taken from the first
readable sample, so a sample of another size is reported. Packed shards are also checked against
the CRC-32 and size their manifest records. Training the same data reports the same problems
(the same validation code), but only when it reaches them.
"""

from __future__ import annotations

import dataclasses
import os

from array_record.python import array_record_module
import numpy as np
import tqdm

from lgdlm_jax.data import formats
from lgdlm_jax.data import packed_reader
from lgdlm_jax.data import packed_writer
from lgdlm_jax.data import sources
from lgdlm_jax.data.formats import CorruptSampleError


@dataclasses.dataclass
class Limits:
  vocab_size: int | None = None
  seq_len: int | None = None
  latent_dim: int | None = None


@dataclasses.dataclass
class Report:
  num_checked: int = 0
  num_bad: int = 0
  first_bad: list[str] = dataclasses.field(default_factory=list)  # reasons, each naming its file
  limits: Limits = dataclasses.field(default_factory=Limits)
  max_listed: int = 20

  def bad(self, reason: str) -> None:
    self.num_bad += 1
    if len(self.first_bad) < self.max_listed:
      self.first_bad.append(reason)

  def summary(self) -> str:
    limits = ', '.join(f'{k}={v}' for k, v in dataclasses.asdict(self.limits).items())
    lines = [
      f'{self.num_checked} samples checked ({limits}): {self.num_checked - self.num_bad} good, {self.num_bad} bad'
    ]
    lines += [f'  {reason}' for reason in self.first_bad]
    if self.num_bad > len(self.first_bad):
      lines.append(f'  ... and {self.num_bad - len(self.first_bad)} more')
    return '\n'.join(lines)


def _fill(limits: Limits, known: dict) -> Limits:
  """Limits given win; the rest from `known` (dataset.json or the manifest)."""
  return Limits(**{k: v if v is not None else known.get(k) for k, v in dataclasses.asdict(limits).items()})


def check_files(token_dir: str, latent_dir: str, limits: Limits, report: Report) -> Report:
  files, unpaired = sources.discover_samples(token_dir, latent_dir, skip_bad_files=True)
  for path in unpaired:
    report.num_checked += 1
    report.bad(f'{path}: no latent partner in {latent_dir}')
  for sample_files in tqdm.tqdm(files, desc='checking', mininterval=5, disable=None):
    report.num_checked += 1
    try:
      _, _, latent = formats.read_file_pair(
        sample_files, max_len=limits.seq_len, vocab_size=limits.vocab_size, latent_dim=limits.latent_dim
      )
    except CorruptSampleError as e:
      report.bad(str(e))
      continue
    if limits.latent_dim is None:  # the first readable sample sets the size the others must have
      limits.latent_dim = latent.shape[0]
  return report


def _records(path: str, chunk: int = 4096):
  """Every record of one shard, in order, read a chunk at a time."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    for start in range(0, reader.num_records(), chunk):
      # with_retries calls the lambda before the loop moves on.
      yield from formats.with_retries(
        lambda: reader.read(list(range(start, min(start + chunk, reader.num_records())))),  # noqa: B023
        path,
      )
  finally:
    reader.close()


def _stored_lengths(directory: str, shard: dict, report: Report) -> np.ndarray | None:
  """The shard's lengths array (packed rows read it), or None: absent (packed before it existed) or bad."""
  if 'lengths' not in shard:
    return None
  path = os.path.join(directory, shard['lengths'])
  try:
    lengths = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    report.bad(f'{path}: cannot read the lengths array ({type(e).__name__}: {e})')
    return None
  if lengths.shape != (shard['num_samples'],):
    report.bad(f'{path}: {lengths.shape[0] if lengths.ndim else 0} lengths for {shard["num_samples"]} records')
    return None
  return lengths


def check_packed(directory: str, limits: Limits, report: Report) -> Report:
  manifest = packed_reader.read_manifest(directory)
  limits = report.limits = _fill(limits, {'vocab_size': manifest.vocab_size, 'latent_dim': manifest.latent_dim})
  for shard in manifest.shards:
    path = os.path.join(directory, shard['file'])
    if not os.path.isfile(path):
      report.bad(f'{path}: missing shard')
      continue
    size, crc = os.path.getsize(path), formats.with_retries(lambda: packed_writer.file_crc32(path), path)  # noqa: B023
    if (size, crc) != (shard['bytes'], shard['crc32']):
      report.bad(
        f'{path}: {size} bytes with CRC-32 {crc}, the manifest says {shard["bytes"]} bytes, '
        f'{shard["crc32"]}: the shard is damaged'
      )
      continue
    lengths = _stored_lengths(directory, shard, report)
    for i, record in enumerate(
      tqdm.tqdm(_records(path), desc=shard['file'], total=shard['num_samples'], mininterval=5, disable=None)
    ):
      report.num_checked += 1
      where = f'{path} record {i}'
      try:
        name, ids, mask, latent = formats.decode_record(
          record, token_dtype=manifest.token_dtype, latent_dim=manifest.latent_dim
        )
      except CorruptSampleError as e:
        report.bad(f'{where}: {e}')
        continue
      where = f'{where} ({name})'
      if lengths is not None and lengths[i] != formats.real_length(mask):
        report.bad(f'{where}: {formats.real_length(mask)} tokens, its lengths array says {lengths[i]}')
        continue
      try:
        formats.check_tokens(ids, mask.view(np.uint8), where, max_len=limits.seq_len, vocab_size=limits.vocab_size)
        formats.check_latent(latent, where, limits.latent_dim)
      except CorruptSampleError as e:
        report.bad(str(e))
  return report


def check(
  directory: str | None = None,
  *,
  token_dir: str | None = None,
  latent_dir: str | None = None,
  limits: Limits | None = None,
  max_listed: int = 20,
) -> Report:
  """Checks a data_dir, a packed directory, or token_dir + latent_dir; see the module docstring."""
  limits = limits or Limits()
  report = Report(max_listed=max_listed)
  if directory is not None and packed_reader.is_packed(directory):
    return check_packed(directory, limits, report)
  if directory is not None:
    info = packed_writer.read_dataset_info(directory)
    split = info.get('split', 'train')
    token_dir, latent_dir = (os.path.join(directory, kind, split) for kind in ('tokens', 'latents'))
    limits = _fill(limits, info)
  report.limits = limits
  return check_files(token_dir, latent_dir, limits, report)
