"""One sample, read and validated, in each layout: the reference's token/latent files and our packed record.

A sample is `{'input_ids': int32 [S], 'attention_mask': bool [S], 'latent': float32 [D]}`, with
S = `model.max_seq_len`: shorter sequences are right-padded with `tokenizer.pad_token_id` and mask
False; longer ones are an error naming the file, or cut to S where `data.truncate_long_samples`
says so (SampleSpec.truncate; the pipeline states it in the log). A sample's length for packed rows
(`real_length`) is the position of its last real token + 1: the padding a file carries after its
sentence is not part of it.

Errors: `CorruptSampleError` for a sample that can be read but is wrong, or cannot be parsed
(`data.skip_bad_files` may skip it); `DataIOError` when the storage fails after retries (never
skipped: a flaky mount must not quietly drop data). Both are `DataError`s naming the file.

This module imports neither jax nor grain: grain's worker processes import it.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import math
import re
import struct
import time
from typing import BinaryIO, TypeVar
import zipfile
import zlib

import numpy as np

from lgdlm_jax import errors

Sample = dict[str, np.ndarray]
Unpadded = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids [L], mask bool [L], latent float32 [D]
T = TypeVar('T')

# What zipfile/zlib/numpy raise for a truncated or garbled .npz/.npy (OSError is storage, not data).
_PARSE_ERRORS = (ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
IO_RETRIES = 3  # attempts after the first, with exponential back-off from IO_BACKOFF_S
IO_BACKOFF_S = 0.2


class DataError(errors.InputError):
  """The dataset cannot be used: the message names the file and the problem."""


class CorruptSampleError(DataError):
  """One sample is unreadable or violates the expected shapes/values."""


class DataIOError(DataError):
  """Reading failed at the storage level after retries."""


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  seq_len: int
  latent_dim: int
  vocab_size: int
  pad_id: int = 0
  truncate: bool = False  # data.truncate_long_samples: cut samples longer than seq_len instead of failing


def real_length(mask: np.ndarray) -> int:
  """The position of the last real token + 1 (0 for an all-padding mask)."""
  real = np.flatnonzero(mask)
  return int(real[-1]) + 1 if real.size else 0


def with_retries(read: Callable[[], T], path: str) -> T:
  """read(), retrying an OSError IO_RETRIES times; DataIOError naming `path` if it keeps failing."""
  for attempt in range(IO_RETRIES + 1):
    try:
      return read()
    except OSError as e:
      if attempt == IO_RETRIES:
        raise DataIOError(f'{path}: read failed {IO_RETRIES + 1} times ({type(e).__name__}: {e})') from e
      time.sleep(IO_BACKOFF_S * 2**attempt)
  raise AssertionError('unreachable')


# ----------------------------------------------------------------------------- validation


def _as_vector(array: np.ndarray, path: str, key: str) -> np.ndarray:
  """Accepts [L] or [1,L] (a batch of one, as tokenizers often save)."""
  if array.ndim == 2 and array.shape[0] == 1:
    array = array[0]
  if array.ndim != 1:
    raise CorruptSampleError(f'{path}: {key} has shape {array.shape}, expected [L] or [1,L]')
  return array


def check_tokens(
  ids: np.ndarray, mask: np.ndarray, path: str, *, max_len: int | None, vocab_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [L], mask bool [L]) of a token file's arrays; the limits that are None are not checked."""
  ids = _as_vector(ids, path, 'input_ids')
  mask = _as_vector(mask, path, 'attention_mask')
  if not np.issubdtype(ids.dtype, np.integer):
    raise CorruptSampleError(f'{path}: input_ids has dtype {ids.dtype}, expected an integer type')
  if mask.shape != ids.shape:
    raise CorruptSampleError(f'{path}: attention_mask shape {mask.shape} != input_ids shape {ids.shape}')
  if max_len is not None and len(ids) > max_len:
    raise CorruptSampleError(f'{path}: sequence length {len(ids)} > model.max_seq_len {max_len}')
  if len(ids) == 0:
    raise CorruptSampleError(f'{path}: empty input_ids')
  upper = np.iinfo(np.int32).max if vocab_size is None else vocab_size
  bad = np.flatnonzero((ids < 0) | (ids >= upper))
  if bad.size:
    raise CorruptSampleError(f'{path}: input_ids[{bad[0]}] = {ids[bad[0]]} outside [0, {upper}) ({bad.size} such ids)')
  if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
    raise CorruptSampleError(f'{path}: attention_mask has values other than 0/1')
  mask = mask.astype(bool)
  if not mask.any():
    # An all-padding sample is what the reference's silent fallback produced; never train on it.
    raise CorruptSampleError(f'{path}: attention_mask is all zero')
  return ids.astype(np.int32), mask


def check_latent(latent: np.ndarray, path: str, latent_dim: int | None) -> np.ndarray:
  """The latent as float32 [D]; latent_dim None accepts any D."""
  if latent.ndim == 2 and latent.shape[0] == 1:
    latent = latent[0]
  if latent.ndim != 1 or (latent_dim is not None and latent.shape[0] != latent_dim):
    expected = 'D' if latent_dim is None else latent_dim
    raise CorruptSampleError(f'{path}: latent shape {latent.shape}, expected [{expected}] or [1, {expected}]')
  if not np.issubdtype(latent.dtype, np.floating):
    raise CorruptSampleError(f'{path}: latent dtype {latent.dtype}, expected floating point')
  with np.errstate(over='ignore'):  # an overflow becomes inf, which the next check reports
    latent = latent.astype(np.float32)
  if not np.isfinite(latent).all():
    raise CorruptSampleError(f'{path}: latent has {np.count_nonzero(~np.isfinite(latent))} non-finite values')
  return latent


def pad_tokens(ids: np.ndarray, mask: np.ndarray, spec: SampleSpec) -> Sample:
  """input_ids and attention_mask right-padded to spec.seq_len (pad id, mask False)."""
  pad = spec.seq_len - len(ids)
  return {
    'input_ids': np.pad(ids, (0, pad), constant_values=spec.pad_id),
    'attention_mask': np.pad(mask, (0, pad), constant_values=False),
  }


def pad_sample(ids: np.ndarray, mask: np.ndarray, latent: np.ndarray, spec: SampleSpec) -> Sample:
  return {**pad_tokens(ids, mask, spec), 'latent': latent}


# ----------------------------------------------------------------------------- .npz / .npy files


def _header_field(header: str, key: str, value_pattern: str, path: str) -> str:
  match = re.search(rf"'{key}'\s*:\s*{value_pattern}", header)
  if match is None:
    raise CorruptSampleError(f'{path}: unsupported .npy header {header.strip()!r}')
  return match.group(1)


def _read_exact(stream: BinaryIO, size: int, path: str, what: str) -> bytes:
  payload = stream.read(size)
  if len(payload) != size:
    raise CorruptSampleError(f'{path}: truncated {what}: {len(payload)} of {size} bytes')
  return payload


def read_npy(stream: BinaryIO, path: str) -> np.ndarray:
  """Reads one .npy payload, plain numeric arrays only.

  numpy's own loader parses the header with `ast.literal_eval`, and CPython 3.11's AST
  constructor keeps interpreter-global state: a header parse on a reader thread that overlaps
  any parse on another thread (a traceback being formatted, pytest's reports) fails one of them
  with a SystemError. So the header dict is read with regular expressions here instead.
  """
  version = np.lib.format.read_magic(stream)  # plain byte comparison, no ast
  if version not in ((1, 0), (2, 0), (3, 0)):
    raise CorruptSampleError(f'{path}: unsupported .npy version {version}')
  length_size = 2 if version == (1, 0) else 4
  header_length = int.from_bytes(_read_exact(stream, length_size, path, 'header length'), 'little')
  header = _read_exact(stream, header_length, path, 'header').decode('utf8' if version == (3, 0) else 'latin1')
  descr = _header_field(header, 'descr', r"'([^']*)'", path)
  fortran_order = _header_field(header, 'fortran_order', r'(True|False)', path) == 'True'
  shape_text = _header_field(header, 'shape', r'\(([\d,\s]*)\)', path)
  shape = tuple(int(dim) for dim in shape_text.split(',') if dim.strip())
  try:
    dtype = np.dtype(descr)
  except TypeError as e:
    raise CorruptSampleError(f'{path}: unsupported .npy dtype {descr!r}') from e
  if dtype.hasobject:
    raise CorruptSampleError(f'{path}: object arrays are not supported')
  payload = _read_exact(stream, math.prod(shape) * dtype.itemsize, path, 'array data')
  return np.frombuffer(payload, dtype).reshape(shape, order='F' if fortran_order else 'C')


def read_token_file(path: str) -> tuple[np.ndarray, np.ndarray]:
  """The raw (input_ids, attention_mask) arrays of a `.npz` token file."""

  def read():
    try:
      with zipfile.ZipFile(path) as archive:
        members = {name[: -len('.npy')]: name for name in archive.namelist() if name.endswith('.npy')}
        missing = [k for k in ('input_ids', 'attention_mask') if k not in members]
        if missing:
          raise CorruptSampleError(f'{path}: missing array(s) {missing}; has {sorted(members)}')
        arrays = []
        for key in ('input_ids', 'attention_mask'):
          with archive.open(members[key]) as member:
            arrays.append(read_npy(member, path))
        return tuple(arrays)
    except CorruptSampleError:
      raise  # names the file and the problem already
    except _PARSE_ERRORS as e:
      raise CorruptSampleError(f'{path}: cannot read token file ({type(e).__name__}: {e})') from e

  return with_retries(read, path)


def read_latent_file(path: str) -> np.ndarray:
  def read():
    try:
      with open(path, 'rb') as stream:
        return read_npy(stream, path)
    except CorruptSampleError:
      raise  # names the file and the problem already
    except _PARSE_ERRORS as e:
      raise CorruptSampleError(f'{path}: cannot read latent file ({type(e).__name__}: {e})') from e

  return with_retries(read, path)


@dataclasses.dataclass(frozen=True)
class SampleFiles:
  name: str
  token_path: str
  latent_path: str


def read_file_pair(
  files: SampleFiles, *, max_len: int | None, vocab_size: int | None, latent_dim: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids, mask, latent) of one sample, validated, unpadded; CorruptSampleError naming the file."""
  ids, mask = check_tokens(*read_token_file(files.token_path), files.token_path, max_len=max_len, vocab_size=vocab_size)
  return ids, mask, check_latent(read_latent_file(files.latent_path), files.latent_path, latent_dim)


def read_sample(files: SampleFiles, spec: SampleSpec) -> Sample:
  """Reads, validates and pads one file pair; CorruptSampleError naming the offending file."""
  ids, mask, latent = read_file_pair(
    files, max_len=spec.seq_len, vocab_size=spec.vocab_size, latent_dim=spec.latent_dim
  )
  return pad_sample(ids, mask, latent, spec)


# ----------------------------------------------------------------------------- packed records

# A packed record: u16 name length, u32 token count L, the name (UTF-8), L token ids
# (manifest.token_dtype), L mask bytes (0/1), D float32 latent values. Only validated samples are
# packed, so reading one back checks its framing, not its values again.
_RECORD_HEADER = struct.Struct('<HI')


def encode_record(name: str, ids: np.ndarray, mask: np.ndarray, latent: np.ndarray, token_dtype: str) -> bytes:
  encoded_name = name.encode('utf-8')
  return b''.join(
    (
      _RECORD_HEADER.pack(len(encoded_name), len(ids)),
      encoded_name,
      ids.astype(token_dtype).tobytes(),
      mask.astype(np.uint8).tobytes(),
      latent.astype(np.float32).tobytes(),
    )
  )


def decode_record(
  record: bytes, *, token_dtype: str, latent_dim: int
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
  """(name, ids [L], mask bool [L], latent float32 [D]), read-only views of `record`.

  The ids keep the manifest's token dtype (copying them out casts them). A wrong framing is a
  CorruptSampleError without the record's location, which the caller adds (computing it for
  every record would cost more than decoding it).
  """
  token_dtype = np.dtype(token_dtype)
  try:
    name_len, length = _RECORD_HEADER.unpack_from(record)
  except struct.error as e:
    raise CorruptSampleError(f'record of {len(record)} bytes has no header') from e
  start = _RECORD_HEADER.size + name_len
  expected = start + length * (token_dtype.itemsize + 1) + latent_dim * 4
  if len(record) != expected:
    raise CorruptSampleError(
      f'record of {len(record)} bytes, expected {expected} for {length} tokens and a latent of {latent_dim}'
    )
  name = record[_RECORD_HEADER.size : start].decode('utf-8', errors='replace')
  ids = np.frombuffer(record, token_dtype, length, start)
  mask = np.frombuffer(record, np.bool_, length, start + length * token_dtype.itemsize)  # packed as 0/1 bytes
  latent = np.frombuffer(record, np.float32, latent_dim, start + length * (token_dtype.itemsize + 1))
  return name, ids, mask, latent
