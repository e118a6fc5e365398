"""Latents and token files named on a command line (`sample --latents`, `sample t2l --texts DIR`), read and
validated as training reads its samples (lgdlm_jax.data.formats): a bad file is an InputError naming it."""

import os

import numpy as np

from lgdlm_jax import config as config_lib
from lgdlm_jax import errors
from lgdlm_jax.data import formats


def read_latents(path: str, latent_dim: int) -> tuple[list[str], np.ndarray]:
  """(names, latents float32 [N,D]) from a directory of NAME.npy or one [D] / [N,D] file, each latent
  validated as training validates it (float, finite, D = model.latent_dim); InputError naming the file."""
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if f.endswith('.npy'))
    if not files:
      raise errors.InputError(f'--latents {path}: no .npy files in the directory')
    latents = [_latent(os.path.join(path, f), latent_dim) for f in files]
    return [f[: -len('.npy')] for f in files], np.stack(latents)
  array = formats.read_latent_file(path)
  if array.ndim not in (1, 2) or array.size == 0:
    raise errors.InputError(f'{path}: latents of shape {array.shape}, expected [{latent_dim}] or [N, {latent_dim}]')
  rows = array[None] if array.ndim == 1 else array
  latents = [formats.check_latent(row, f'{path} row {i}', latent_dim) for i, row in enumerate(rows)]
  return [f'{i:06d}' for i in range(len(latents))], np.stack(latents)


def _latent(path: str, latent_dim: int) -> np.ndarray:
  return formats.check_latent(formats.read_latent_file(path), path, latent_dim)


def read_token_dir(path: str, config: config_lib.Config) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(names, input_ids [N,S], attention_mask bool [N,S]) from NAME[_tokens].npz files, each validated as
  training validates it and right-padded to S = model.max_seq_len; InputError naming the file."""
  files = sorted(f for f in os.listdir(path) if f.endswith('.npz'))
  if not files:
    raise errors.InputError(
      f'--texts {path}: no .npz token files in the directory (t2l takes a directory of '
      'NAME[_tokens].npz files, or a text file)'
    )
  spec = formats.SampleSpec(
    int(config.model.max_seq_len), 0, int(config.model.vocab_size), int(config.tokenizer.pad_token_id)
  )
  ids, masks = [], []
  for f in files:
    file_path = os.path.join(path, f)
    row_ids, row_mask = formats.check_tokens(
      *formats.read_token_file(file_path), file_path, max_len=spec.seq_len, vocab_size=spec.vocab_size
    )
    padded = formats.pad_tokens(row_ids, row_mask, spec)
    ids.append(padded['input_ids'])
    masks.append(padded['attention_mask'])
  names = [f[: -len('_tokens.npz')] if f.endswith('_tokens.npz') else f[: -len('.npz')] for f in files]
  return names, np.stack(ids), np.stack(masks)
