"""Random access to the samples of a dataset: the reference's per-sample files, packed shards, or synthetic.

Layouts (read through the same config keys):
  * `data.token_dir` + `data.latent_dir`: `NAME_tokens.npz` (or `NAME.npz`) holding `input_ids` and
    `attention_mask`, paired with `latent_dir/NAME.npy` holding the latent, shape [D] or [1,D].
  * `data.data_dir`: either a packed directory (recognised by its `manifest.json`, written by
    `python -m lgdlm_jax.prepare_data pack`), or the same file pairs under `tokens/train/` and
    `latents/train/` (`texts/` is not read: the objective needs no text).
  * neither: synthetic samples, as the reference's `--synthetic` makes them: full-length uniform
    random tokens (no padding) and standard normal latents.

Sample i of a file dataset is the i-th name in sorted order, and packing keeps that order, so
both layouts of one dataset hold the same samples at the same indices. `data.max_samples` keeps
the first ones; then `int(n * val_ratio)` samples (at least 1 when val_ratio > 0 and n > 1) at the
positions `permutation(n)[:n_val]` of `np.random.default_rng((training.seed, 0))` go to validation.

A source has `__len__`, `read_many(indices)` (the raw records of a batch: file names, or bytes
read in one call per shard), `decode(raw)` (the parsing and validation: the sample's unpadded
(ids, mask, latent), at most `spec.seq_len` tokens; both run in grain's workers), and for packed
rows (lgdlm_jax.data.packing) `sample_length(i)` (formats.real_length of sample i, before any
truncation: from the shards' lengths arrays, read at start-up; from a per-sample token file, read
when the packer first reaches the sample) and `name(i)` (what an error calls it).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os
from typing import Any, Protocol

from absl import logging
import ml_collections
import numpy as np

from lgdlm_jax.data import formats
from lgdlm_jax.data import packed_reader
from lgdlm_jax.data.formats import CorruptSampleError
from lgdlm_jax.data.formats import DataError
from lgdlm_jax.data.formats import SampleFiles
from lgdlm_jax.data.formats import SampleSpec

_TOKEN_SUFFIXES = ('_tokens.npz', '.npz')  # longest first: `a_tokens.npz` names sample `a`
# Tags that keep the random streams of the split, the epoch shuffles (lgdlm_jax.data.pipeline) and
# the synthetic samples independent of each other although they share the training seed.
SPLIT_TAG = 0
SHUFFLE_TAG = 1
SYNTHETIC_TAG = 2


class Source(Protocol):
  spec: SampleSpec

  def __len__(self) -> int: ...

  def read_many(self, indices: Sequence[int]) -> list[Any]: ...

  def decode(self, raw: Any) -> formats.Unpadded: ...


# ----------------------------------------------------------------------------- per-sample files


def _sample_name(token_file: str) -> str | None:
  for suffix in _TOKEN_SUFFIXES:
    if token_file.endswith(suffix) and len(token_file) > len(suffix):
      return token_file[: -len(suffix)]
  return None


def _list_dir(path: str, what: str) -> list[str]:
  if not os.path.isdir(path):
    raise DataError(f'{what} {path!r} is not a directory')
  return sorted(entry.name for entry in os.scandir(path) if entry.is_file())


def discover_samples(
  token_dir: str, latent_dir: str, *, skip_bad_files: bool = False
) -> tuple[list[SampleFiles], list[str]]:
  """Pairs token files with latent files, sorted by sample name; returns (pairs, unpaired token paths).

  An unpaired token file is a CorruptSampleError unless skip_bad_files, which returns it instead.
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
      raise DataError(f'{token_path}: sample name {name!r} is also used by {pairs[name].token_path}')
    if f'{name}.npy' not in latent_names:
      if not skip_bad_files:
        raise CorruptSampleError(f'{token_path}: no latent partner {os.path.join(latent_dir, name + ".npy")}')
      logging.warning('Skipping %s: no latent partner in %s', token_path, latent_dir)
      unpaired.append(token_path)
      continue
    pairs[name] = SampleFiles(name, token_path, os.path.join(latent_dir, f'{name}.npy'))
  if not pairs:
    raise DataError(f'no token/latent pairs found in {token_dir!r} and {latent_dir!r}')
  return [pairs[name] for name in sorted(pairs)], unpaired


def truncated(sample: formats.Unpadded, spec: SampleSpec) -> formats.Unpadded:
  """A sample cut to spec.seq_len tokens (the caller allowed it: spec.truncate)."""
  ids, mask, latent = sample
  return ids[: spec.seq_len], mask[: spec.seq_len], latent


@dataclasses.dataclass(frozen=True)
class FileSource:
  files: Sequence[SampleFiles]
  spec: SampleSpec

  def __len__(self) -> int:
    return len(self.files)

  def read_many(self, indices: Sequence[int]) -> list[SampleFiles]:
    return [self.files[i] for i in indices]

  def decode(self, raw: SampleFiles) -> formats.Unpadded:
    max_len = None if self.spec.truncate else self.spec.seq_len
    sample = formats.read_file_pair(
      raw, max_len=max_len, vocab_size=self.spec.vocab_size, latent_dim=self.spec.latent_dim
    )
    return truncated(sample, self.spec)

  def sample_length(self, index: int) -> int:
    """Reads the token file (CorruptSampleError naming it when it is bad); the packer caches the answer."""
    path = self.files[index].token_path
    _, mask = formats.check_tokens(*formats.read_token_file(path), path, max_len=None, vocab_size=self.spec.vocab_size)
    return formats.real_length(mask)

  def name(self, index: int) -> str:
    return self.files[index].token_path


# ----------------------------------------------------------------------------- synthetic


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
  """Sample i is a pure function of (seed, stream, i): restorable and identical on every host."""

  num_samples: int
  spec: SampleSpec
  seed: int
  stream: int = 0  # 0 = train, 1 = validation

  def __len__(self) -> int:
    return self.num_samples

  def read_many(self, indices: Sequence[int]) -> list[int]:
    return [int(i) for i in indices]

  def decode(self, raw: int) -> formats.Unpadded:
    rng = np.random.default_rng((self.seed, SYNTHETIC_TAG, self.stream, raw))
    return (
      rng.integers(0, self.spec.vocab_size, size=self.spec.seq_len, dtype=np.int32),
      np.ones(self.spec.seq_len, bool),
      rng.standard_normal(self.spec.latent_dim).astype(np.float32),
    )

  def sample_length(self, index: int) -> int:
    return self.spec.seq_len

  def name(self, index: int) -> str:
    return f'synthetic sample {index}'


# ----------------------------------------------------------------------------- from the config


def split_train_val(num_samples: int, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns sorted (train, val) index arrays; see the module docstring for the rule."""
  num_val = int(num_samples * val_ratio)
  if val_ratio > 0 and num_val == 0 and num_samples > 1:
    num_val = 1  # a positive ratio asks for validation; int() alone gives none for small sets
  order = np.random.default_rng((seed, SPLIT_TAG)).permutation(num_samples)
  return np.sort(order[num_val:]), np.sort(order[:num_val])


@dataclasses.dataclass(frozen=True)
class Sources:
  train: Source
  val: Source | None
  num_samples: int  # train + val (+ unpaired): what data.max_bad_fraction is a fraction of
  keys: tuple[np.ndarray, np.ndarray]  # the dataset index of each train and val sample
  unpaired: tuple[str, ...] = ()  # token files without a latent, skipped at listing


def sample_spec(config: ml_collections.ConfigDict) -> SampleSpec:
  return SampleSpec(
    seq_len=config.model.max_seq_len,
    latent_dim=config.model.latent_dim,
    vocab_size=config.model.vocab_size,
    pad_id=config.tokenizer.pad_token_id,
    truncate=config.data.truncate_long_samples,
  )


def open_sources(config: ml_collections.ConfigDict) -> Sources:
  data, seed, spec = config.data, config.training.seed, sample_spec(config)
  if not (data.data_dir or data.token_dir):
    num_val = int(data.synthetic_num_samples * data.val_ratio)
    val = SyntheticSource(num_val, spec, seed, stream=1) if num_val else None
    num = data.synthetic_num_samples
    return Sources(
      SyntheticSource(num, spec, seed, stream=0), val, num + num_val, (np.arange(num), num + np.arange(num_val))
    )
  if data.data_dir and packed_reader.is_packed(data.data_dir):
    manifest = packed_reader.read_manifest(data.data_dir)
    packed_reader.check_manifest_fits(manifest, spec, data.data_dir, config.tokenizer.mask_token_id)
    num = min(manifest.num_samples, data.max_samples or manifest.num_samples)
    train_idx, val_idx = split_train_val(num, data.val_ratio, seed)
    logging.info('Data: %d train, %d val samples packed in %s', len(train_idx), len(val_idx), data.data_dir)
    val = packed_reader.PackedSource(data.data_dir, manifest, spec, val_idx) if len(val_idx) else None
    return Sources(packed_reader.PackedSource(data.data_dir, manifest, spec, train_idx), val, num, (train_idx, val_idx))
  if data.data_dir:
    token_dir, latent_dir = (os.path.join(data.data_dir, kind, 'train') for kind in ('tokens', 'latents'))
  else:
    token_dir, latent_dir = data.token_dir, data.latent_dir
  files, unpaired = discover_samples(token_dir, latent_dir, skip_bad_files=data.skip_bad_files)
  if data.max_samples:
    files = files[: data.max_samples]
  train_idx, val_idx = split_train_val(len(files), data.val_ratio, seed)
  logging.info(
    'Data: %d train, %d val samples from %s (%d unpaired token files skipped)',
    len(train_idx),
    len(val_idx),
    token_dir,
    len(unpaired),
  )
  val = FileSource([files[i] for i in val_idx], spec) if len(val_idx) else None
  return Sources(
    FileSource([files[i] for i in train_idx], spec),
    val,
    len(files) + len(unpaired),
    (train_idx, val_idx),
    tuple(unpaired),
  )
