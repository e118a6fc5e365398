"""Input pipeline: per-sample token/latent files -> validated, sharded, checkpointable batches.

Layouts (SPEC section 4), one sample per file pair:
  * `data.token_dir` + `data.latent_dir`: `NAME_tokens.npz` (or `NAME.npz`) holding `input_ids`
    and `attention_mask`, paired with `latent_dir/NAME.npy` holding the latent, shape [D] or [1,D].
  * `data.data_dir`: the same pairs under `tokens/<split>/` and `latents/<split>/`
    (`data.split`); `texts/<split>/` is not read, the objective needs no text.
  * neither: a deterministic synthetic source (`data.synthetic_num_samples`).

Decisions:
  * Samples are sorted by NAME, `max_samples` (0 = all) keeps the first ones, then the validation
    split takes `int(n * val_ratio)` samples (at least 1 when val_ratio > 0 and n > 1) at the
    positions `permutation(n)[:n_val]` of `np.random.default_rng((seed, 0))`, seed =
    `training.seed`. The split therefore depends only on the sorted names, the ratio and the seed.
  * Sequences shorter than `model.max_seq_len` are right-padded with `tokenizer.pad_token_id`
    (default 0) and mask False; longer ones are a DataError, never silently truncated.
  * Batches: `input_ids` int32 [b,S], `attention_mask` bool [b,S], `latent` float32 [b,D], with
    b = global batch // process_count.
  * `training.train_batch_size` and `eval_batch_size` are GLOBAL batch sizes. Epoch e is the
    permutation `np.random.default_rng((seed, 1, e)).permutation(n)` cut to whole global batches;
    global batch k is its slice [k*B, (k+1)*B) and process p reads rows [p*b, (p+1)*b) of it.
  * A bad sample raises DataError naming the file. With `data.skip_bad_files` it is logged,
    counted and replaced by the next sample of this process's stream (crossing into the next
    epoch if needed), so every process still yields a batch at every step; per-process shares
    then stay disjoint but no longer line up exactly with the global slice, and each process's
    iterator state must be saved separately.
  * Plain numpy rather than grain: random access over file pairs, per-epoch shuffling, sharding
    and an exact JSON state are ~100 lines here, while grain would still need custom code for
    whole-global-batch epochs and skip semantics and adds a fast-moving dependency.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import queue
import re
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, Protocol

from absl import logging
import jax
import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]

# Tags that keep the random streams of the split, the epoch shuffles and the synthetic samples
# independent even though they share the training seed.
_SPLIT_TAG = 0
_SHUFFLE_TAG = 1
_SYNTHETIC_TAG = 2

_TOKEN_SUFFIXES = ('_tokens.npz', '.npz')  # longest first: `a_tokens.npz` names sample `a`
# What zipfile/zlib/numpy raise for truncated or otherwise unreadable .npz/.npy files.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


class DataError(Exception):
  """A sample file is missing, unreadable or violates the expected shapes/values."""


# ----------------------------------------------------------------------------- discovery


@dataclasses.dataclass(frozen=True)
class SampleFiles:
  name: str
  token_path: str
  latent_path: str


def _sample_name(token_file: str) -> str | None:
  for suffix in _TOKEN_SUFFIXES:
    if token_file.endswith(suffix) and len(token_file) > len(suffix):
      return token_file[:-len(suffix)]
  return None


def _list_dir(path: str, what: str) -> list[str]:
  if not os.path.isdir(path):
    raise DataError(f'{what} {path!r} is not a directory')
  return sorted(entry.name for entry in os.scandir(path) if entry.is_file())


def discover_samples(
    token_dir: str, latent_dir: str, *, skip_bad_files: bool = False
) -> tuple[list[SampleFiles], list[str]]:
  """Pairs token files with latent files, sorted by sample name.

  Returns (pairs, unpaired token paths). An unpaired token file is a DataError unless
  skip_bad_files, in which case it is returned so the caller can count it.
  """
  latent_names = set(_list_dir(latent_dir, 'latent_dir'))
  pairs: dict[str, SampleFiles] = {}
  unpaired = []
  for token_file in _list_dir(token_dir, 'token_dir'):
    name = _sample_name(token_file)
    if name is None:
      continue
    token_path = os.path.join(token_dir, token_file)
    if name in pairs:
      # `a.npz` and `a_tokens.npz` would both claim `a.npy`; picking one would hide data.
      raise DataError(
          f'{token_path}: sample name {name!r} is also used by {pairs[name].token_path}')
    if f'{name}.npy' not in latent_names:
      if not skip_bad_files:
        partner = os.path.join(latent_dir, f'{name}.npy')
        raise DataError(f'{token_path}: no latent partner {partner}')
      logging.warning('Skipping %s: no latent partner in %s', token_path, latent_dir)
      unpaired.append(token_path)
      continue
    pairs[name] = SampleFiles(name, token_path, os.path.join(latent_dir, f'{name}.npy'))
  samples = [pairs[name] for name in sorted(pairs)]
  if not samples:
    raise DataError(f'no token/latent pairs found in {token_dir!r} and {latent_dir!r}')
  return samples, unpaired


def split_train_val(
    num_samples: int, val_ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Returns sorted (train, val) index arrays; see the module docstring for the rule."""
  if not 0.0 <= val_ratio < 1.0:
    raise ValueError(f'data.val_ratio must be in [0, 1), got {val_ratio}')
  num_val = int(num_samples * val_ratio)
  if val_ratio > 0 and num_val == 0 and num_samples > 1:
    num_val = 1  # a positive ratio asks for validation; int() alone gives none for small sets
  order = np.random.default_rng((seed, _SPLIT_TAG)).permutation(num_samples)
  return np.sort(order[num_val:]), np.sort(order[:num_val])


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  seq_len: int
  latent_dim: int
  vocab_size: int
  pad_id: int = 0


def _as_vector(array: np.ndarray, path: str, key: str) -> np.ndarray:
  """Accepts [L] or [1,L] (a batch of one, as tokenizers often save)."""
  if array.ndim == 2 and array.shape[0] == 1:
    array = array[0]
  if array.ndim != 1:
    raise DataError(f'{path}: {key} has shape {array.shape}, expected [L] or [1,L]')
  return array


def _header_field(header: str, key: str, value_pattern: str, path: str) -> str:
  match = re.search(rf"'{key}'\s*:\s*{value_pattern}", header)
  if match is None:
    raise DataError(f'{path}: unsupported .npy header {header.strip()!r}')
  return match.group(1)


def _read_npy(stream: BinaryIO, path: str) -> np.ndarray:
  """Reads one .npy payload, plain numeric arrays only.

  numpy's own loader parses the header with `ast.literal_eval`, and CPython 3.11's AST
  constructor keeps interpreter-global state: a header parse on a reader thread that overlaps
  any parse on another thread (a traceback being formatted, pytest's reports) fails one of them
  with a SystemError. So the header dict is read with regular expressions here instead.
  """
  version = np.lib.format.read_magic(stream)  # plain byte comparison, no ast
  if version not in ((1, 0), (2, 0), (3, 0)):
    raise DataError(f'{path}: unsupported .npy version {version}')
  length_size = 2 if version == (1, 0) else 4
  header_length = int.from_bytes(_read_exact(stream, length_size, path, 'header length'), 'little')
  header = _read_exact(stream, header_length, path, 'header').decode(
      'utf8' if version == (3, 0) else 'latin1')
  descr = _header_field(header, 'descr', r"'([^']*)'", path)
  fortran_order = _header_field(header, 'fortran_order', r'(True|False)', path) == 'True'
  shape_text = _header_field(header, 'shape', r'\(([\d,\s]*)\)', path)
  shape = tuple(int(dim) for dim in shape_text.split(',') if dim.strip())
  try:
    dtype = np.dtype(descr)
  except TypeError as e:
    raise DataError(f'{path}: unsupported .npy dtype {descr!r}') from e
  if dtype.hasobject:
    raise DataError(f'{path}: object arrays are not supported')
  payload = _read_exact(stream, math.prod(shape) * dtype.itemsize, path, 'array data')
  return np.frombuffer(payload, dtype).reshape(shape, order='F' if fortran_order else 'C')


def _read_exact(stream: BinaryIO, size: int, path: str, what: str) -> bytes:
  payload = stream.read(size)
  if len(payload) != size:
    raise DataError(f'{path}: truncated {what}: {len(payload)} of {size} bytes')
  return payload


def _read_tokens(path: str, spec: SampleSpec) -> tuple[np.ndarray, np.ndarray]:
  try:
    with zipfile.ZipFile(path) as archive:
      members = {name[:-len('.npy')]: name for name in archive.namelist() if name.endswith('.npy')}
      missing = [k for k in ('input_ids', 'attention_mask') if k not in members]
      if missing:
        raise DataError(f'{path}: missing array(s) {missing}; has {sorted(members)}')
      arrays = []
      for key in ('input_ids', 'attention_mask'):
        with archive.open(members[key]) as member:
          arrays.append(_read_npy(member, path))
      ids, mask = arrays
  except _READ_ERRORS as e:
    raise DataError(f'{path}: cannot read token file ({type(e).__name__}: {e})') from e
  ids = _as_vector(ids, path, 'input_ids')
  mask = _as_vector(mask, path, 'attention_mask')
  if not np.issubdtype(ids.dtype, np.integer):
    raise DataError(f'{path}: input_ids has dtype {ids.dtype}, expected an integer type')
  if mask.shape != ids.shape:
    raise DataError(f'{path}: attention_mask shape {mask.shape} != input_ids shape {ids.shape}')
  if len(ids) > spec.seq_len:
    raise DataError(f'{path}: sequence length {len(ids)} > model.max_seq_len {spec.seq_len}')
  if len(ids) == 0:
    raise DataError(f'{path}: empty input_ids')
  bad = np.flatnonzero((ids < 0) | (ids >= spec.vocab_size))
  if bad.size:
    raise DataError(f'{path}: input_ids[{bad[0]}] = {ids[bad[0]]} outside [0, {spec.vocab_size}) '
                    f'({bad.size} such ids)')
  if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
    raise DataError(f'{path}: attention_mask has values other than 0/1')
  mask = mask.astype(bool)
  if not mask.any():
    # An all-padding sample is what the reference's silent fallback produced; never train on it.
    raise DataError(f'{path}: attention_mask is all zero')
  pad = spec.seq_len - len(ids)
  ids = np.pad(ids.astype(np.int32), (0, pad), constant_values=spec.pad_id)
  return ids, np.pad(mask, (0, pad), constant_values=False)


def _read_latent(path: str, spec: SampleSpec) -> np.ndarray:
  try:
    with open(path, 'rb') as stream:
      latent = _read_npy(stream, path)
  except _READ_ERRORS as e:
    raise DataError(f'{path}: cannot read latent file ({type(e).__name__}: {e})') from e
  if latent.shape not in ((spec.latent_dim,), (1, spec.latent_dim)):
    raise DataError(f'{path}: latent shape {latent.shape}, expected [{spec.latent_dim}] or '
                    f'[1, {spec.latent_dim}] (model.latent_dim)')
  if not np.issubdtype(latent.dtype, np.floating):
    raise DataError(f'{path}: latent dtype {latent.dtype}, expected floating point')
  with np.errstate(over='ignore'):  # an overflow becomes inf, which the next check reports
    latent = latent.reshape(spec.latent_dim).astype(np.float32)
  if not np.isfinite(latent).all():
    num_bad = np.count_nonzero(~np.isfinite(latent))
    raise DataError(f'{path}: latent has {num_bad} non-finite values')
  return latent


def read_sample(files: SampleFiles, spec: SampleSpec) -> dict[str, np.ndarray]:
  """Reads and validates one sample; raises DataError naming the offending file."""
  ids, mask = _read_tokens(files.token_path, spec)
  return {'input_ids': ids, 'attention_mask': mask, 'latent': _read_latent(files.latent_path, spec)}


# ----------------------------------------------------------------------------- sources


class Source(Protocol):
  """Random access to samples 0..len-1; `load` raises DataError for a bad sample."""

  def __len__(self) -> int: ...

  def load(self, index: int) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class FileSource:
  files: Sequence[SampleFiles]
  spec: SampleSpec

  def __len__(self) -> int:
    return len(self.files)

  def load(self, index: int) -> dict[str, np.ndarray]:
    return read_sample(self.files[index], self.spec)


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
  """Sample i is a pure function of (seed, stream, i): restorable and identical on every host."""
  num_samples: int
  spec: SampleSpec
  seed: int
  stream: int = 0  # 0 = train, 1 = validation

  def __len__(self) -> int:
    return self.num_samples

  def load(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng((self.seed, _SYNTHETIC_TAG, self.stream, index))
    seq_len = self.spec.seq_len
    # Lengths from a quarter to all of S give the padded tails real data has.
    length = int(rng.integers(max(1, seq_len // 4), seq_len + 1))
    ids = rng.integers(0, self.spec.vocab_size, size=seq_len, dtype=np.int32)
    ids[length:] = self.spec.pad_id
    mask = np.arange(seq_len) < length
    latent = rng.standard_normal(self.spec.latent_dim).astype(np.float32)
    return {'input_ids': ids, 'attention_mask': mask, 'latent': latent}


# ----------------------------------------------------------------------------- iterator


@dataclasses.dataclass(frozen=True)
class _Position:
  epoch: int = 0
  index: int = 0  # position in this process's stream for the epoch
  skipped: int = 0  # samples skipped while reading (not counting unpaired files)


def _stack(samples: list[dict[str, np.ndarray]]) -> Batch:
  return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


class BatchIterator:
  """Infinite iterator over this process's share of each global batch.

  `get_state()`/`set_state()` capture the position after the last batch returned by `next`,
  so batches prefetched by the background thread are never lost or repeated on restore.
  """

  def __init__(
      self,
      source: Source,
      *,
      global_batch_size: int,
      seed: int,
      shuffle: bool = True,
      process_index: int = 0,
      process_count: int = 1,
      skip_bad_files: bool = False,
      num_workers: int = 8,
      prefetch: int = 2,
      unpaired_skipped: int = 0,
  ):
    if global_batch_size <= 0 or global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} is not a positive multiple of '
                       f'process_count {process_count}')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    self.steps_per_epoch = len(source) // global_batch_size
    if self.steps_per_epoch == 0:
      raise DataError(f'{len(source)} samples cannot fill one global batch of {global_batch_size}')
    self._source = source
    self._global_batch_size = global_batch_size
    self._batch_size = global_batch_size // process_count
    self._stream_length = self.steps_per_epoch * self._batch_size  # the same in every epoch
    self._seed = seed
    self._shuffle = shuffle
    self._process_index = process_index
    self._process_count = process_count
    self._skip_bad_files = skip_bad_files
    self._unpaired_skipped = unpaired_skipped
    self._prefetch = prefetch
    self._pool = (concurrent.futures.ThreadPoolExecutor(num_workers, 'lgdlm-data-read')
                  if num_workers > 1 else None)
    self._stream_cache: tuple[int, np.ndarray] | None = None
    self._position = _Position()
    self._queue: queue.Queue | None = None
    self._stop: threading.Event | None = None
    self._thread: threading.Thread | None = None

  @property
  def batch_size(self) -> int:
    """Rows per batch on this process."""
    return self._batch_size

  @property
  def num_skipped(self) -> int:
    """Bad samples skipped so far, unpaired token files included (for the trainer to log)."""
    return self._position.skipped + self._unpaired_skipped

  # --- state

  def get_state(self) -> dict[str, int]:
    p = self._position
    return {'epoch': p.epoch, 'index': p.index, 'skipped': p.skipped,
            'process_count': self._process_count, 'global_batch_size': self._global_batch_size}

  def set_state(self, state: dict[str, Any]) -> None:
    # `index` counts rows of THIS process's stream, so it means nothing under another layout.
    for key, expected in (('process_count', self._process_count),
                          ('global_batch_size', self._global_batch_size)):
      if key in state and int(state[key]) != expected:
        raise ValueError(f'data iterator state was saved with {key}={state[key]}, now {expected}')
    position = _Position(int(state['epoch']), int(state['index']), int(state['skipped']))
    if position.epoch < 0 or not 0 <= position.index <= self._stream_length:
      raise ValueError(f'invalid data iterator state {state}')
    self._stop_prefetch()
    self._position = position

  # --- iteration

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> Batch:
    if self._prefetch <= 0:
      batch, self._position = self._next_batch(self._position)
      return batch
    if self._thread is None:
      self._start_prefetch()
    item = self._queue.get()
    if isinstance(item, BaseException):
      self._stop_prefetch()  # a later next() retries from the last good position
      raise item
    batch, self._position = item
    return batch

  def close(self) -> None:
    self._stop_prefetch()
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)

  def __enter__(self) -> BatchIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  # --- batch production: a pure function of the position, so prefetching cannot change results

  def _stream(self, epoch: int) -> np.ndarray:
    """Source indices this process reads in `epoch`, in order."""
    cached = self._stream_cache  # one read: the prefetch thread may replace it concurrently
    if cached is not None and cached[0] == epoch:
      return cached[1]
    n = len(self._source)
    order = (np.random.default_rng((self._seed, _SHUFFLE_TAG, epoch)).permutation(n)
             if self._shuffle else np.arange(n))
    rows = order[:self.steps_per_epoch * self._global_batch_size].reshape(
        self.steps_per_epoch, self._global_batch_size)
    start = self._process_index * self._batch_size
    stream = rows[:, start:start + self._batch_size].reshape(-1)
    self._stream_cache = (epoch, stream)
    return stream

  def _take(self, position: _Position, count: int) -> tuple[list[int], _Position]:
    """The next `count` stream indices, rolling into the next epoch when this one ends."""
    taken: list[int] = []
    epoch, index = position.epoch, position.index
    while len(taken) < count:
      stream = self._stream(epoch)
      if index == len(stream):
        epoch, index = epoch + 1, 0
        continue
      chunk = stream[index:index + count - len(taken)]
      taken.extend(int(i) for i in chunk)
      index += len(chunk)
    return taken, dataclasses.replace(position, epoch=epoch, index=index)

  def _load(self, index: int) -> dict[str, np.ndarray] | DataError:
    try:
      return self._source.load(index)
    except DataError as e:
      return e

  def _next_batch(self, position: _Position) -> tuple[Batch, _Position]:
    samples: list[dict[str, np.ndarray]] = []
    consecutive_bad = 0
    while len(samples) < self._batch_size:
      indices, position = self._take(position, self._batch_size - len(samples))
      loaded = (list(self._pool.map(self._load, indices)) if self._pool is not None
                else [self._load(i) for i in indices])
      for result in loaded:  # in stream order, so skipping is deterministic
        if not isinstance(result, DataError):
          samples.append(result)
          consecutive_bad = 0
          continue
        if not self._skip_bad_files:
          raise result
        logging.warning('Skipping bad sample: %s', result)
        position = dataclasses.replace(position, skipped=position.skipped + 1)
        consecutive_bad += 1
        if consecutive_bad >= self._stream_length:
          raise DataError(f'every sample in this process\'s stream is bad; last: {result}')
    if position.index == self._stream_length:
      position = dataclasses.replace(position, epoch=position.epoch + 1, index=0)
    return _stack(samples), position

  # --- background prefetch

  def _start_prefetch(self) -> None:
    self._queue = queue.Queue(maxsize=self._prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(
        target=self._produce, args=(self._position, self._queue, self._stop),
        name='lgdlm-data-prefetch', daemon=True)
    self._thread.start()

  def _produce(self, position: _Position, out: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
      try:
        item = self._next_batch(position)
        position = item[1]
      except BaseException as e:  # handed to the consumer, which re-raises it
        item = e
      while not stop.is_set():
        try:
          out.put(item, timeout=0.1)
          break
        except queue.Full:
          pass
      if isinstance(item, BaseException):
        return

  def _stop_prefetch(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = self._queue = self._stop = None


# ----------------------------------------------------------------------------- entry point


def _sample_spec(config: ml_collections.ConfigDict) -> SampleSpec:
  return SampleSpec(
      seq_len=config.model.max_seq_len,
      latent_dim=config.model.latent_dim,
      vocab_size=config.model.vocab_size,
      pad_id=config.tokenizer.pad_token_id)


def _file_dirs(data: ml_collections.ConfigDict) -> tuple[str, str] | None:
  """(token_dir, latent_dir) from the config, or None for synthetic data."""
  token_dir, latent_dir, data_dir = data.token_dir, data.latent_dir, data.data_dir
  if data_dir and (token_dir or latent_dir):
    raise ValueError('set either data.data_dir or data.token_dir/latent_dir, not both')
  if data_dir:
    return os.path.join(data_dir, 'tokens', data.split), os.path.join(data_dir, 'latents', data.split)
  if bool(token_dir) != bool(latent_dir):
    raise ValueError('data.token_dir and data.latent_dir must be set together')
  return (token_dir, latent_dir) if token_dir else None


def _make_sources(config: ml_collections.ConfigDict) -> tuple[Source, Source | None, int]:
  """(train source, val source or None, unpaired token files skipped)."""
  data, seed, spec = config.data, int(config.training.seed), _sample_spec(config)
  dirs = _file_dirs(data)
  if dirs is None:
    num = data.synthetic_num_samples
    num_val = int(num * data.val_ratio)
    val = SyntheticSource(num_val, spec, seed, stream=1) if num_val else None
    return SyntheticSource(num, spec, seed, stream=0), val, 0
  files, unpaired = discover_samples(*dirs, skip_bad_files=bool(data.skip_bad_files))
  if data.max_samples:
    files = files[:int(data.max_samples)]
  train_idx, val_idx = split_train_val(len(files), float(data.val_ratio), seed)
  logging.info('Data: %d train, %d val samples from %s (%d unpaired token files skipped)',
               len(train_idx), len(val_idx), dirs[0], len(unpaired))
  train = FileSource([files[i] for i in train_idx], spec)
  val = FileSource([files[i] for i in val_idx], spec) if len(val_idx) else None
  return train, val, len(unpaired)


def make_datasets(
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[BatchIterator, Callable[[], Iterator[Batch]] | None]:
  """Returns (train iterator, val batches factory or None).

  The train iterator is infinite and checkpointable. Each call `val_batches(max_batches=None)`
  yields one pass over the validation split in fixed order, in whole global `eval_batch_size`
  batches (the remainder is dropped so every process runs the same number of eval steps),
  stopping early after `max_batches`. The factory is None when there are no validation samples
  or too few for one eval batch.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  train_source, val_source, unpaired = _make_sources(config)
  data, seed = config.data, int(config.training.seed)
  common = dict(seed=seed, process_index=process_index, process_count=process_count,
                skip_bad_files=bool(data.skip_bad_files),
                num_workers=data.num_workers)
  train = BatchIterator(
      train_source, global_batch_size=int(config.training.train_batch_size), shuffle=True,
      prefetch=data.prefetch_batches, unpaired_skipped=unpaired, **common)

  eval_batch_size = int(config.training.eval_batch_size)
  if val_source is None or len(val_source) < eval_batch_size:
    if val_source is not None:
      logging.warning('Only %d validation samples, fewer than eval_batch_size %d: no evaluation',
                      len(val_source), eval_batch_size)
    return train, None

  def val_batches(max_batches: int | None = None) -> Iterator[Batch]:
    # No prefetch thread: a pass is short and the generator may be abandoned part-way.
    iterator = BatchIterator(val_source, global_batch_size=eval_batch_size, shuffle=False,
                             prefetch=0, **common)
    num_batches = iterator.steps_per_epoch
    if max_batches is not None:
      num_batches = min(num_batches, max_batches)
    try:
      for _ in range(num_batches):
        yield next(iterator)
    finally:
      iterator.close()

  return train, val_batches
