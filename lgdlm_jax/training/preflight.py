"""What `python -m lgdlm_jax.main` checks before any start-up work (jax.distributed, data, compiling).

- `check_paths`: the workdir is a directory or does not exist yet, and it (or the folder it will be
  made in) is writable; every data directory and the init_from path exist; tokenizer.json_file,
  which only the first evaluation reads, can be read. Each problem is one error naming the flag or
  key and the path.
- `finished_step`: the newest checkpoint's step when it is already at training.num_train_steps
  (read from the checkpoint folders' names), so that a finished run exits without writing anything.
"""

import os

import ml_collections

from lgdlm_jax import errors
from lgdlm_jax import text
from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.data import packed_reader


def check_paths(config: ml_collections.FrozenConfigDict, workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir {workdir}: is a file, not a directory')
  _check_writable(workdir)
  data = config.data
  for key, path in (
    ('data.data_dir', data.data_dir),
    ('data.token_dir', data.token_dir),
    ('data.latent_dir', data.latent_dir),
  ):
    if path and not os.path.isdir(path):
      raise FileNotFoundError(f'{key}={path!r}: no such directory')
  if data.data_dir and not packed_reader.is_packed(data.data_dir):
    for kind in ('tokens', 'latents'):
      folder = os.path.join(data.data_dir, kind, 'train')
      if not os.path.isdir(folder):
        raise FileNotFoundError(
          f'data.data_dir={data.data_dir!r}: no {packed_reader.MANIFEST} (packed data) and no '
          f'{os.path.join(kind, "train")}/ (per-sample files)'
        )
  # init_from is read only by a fresh run; a workdir with checkpoints resumes from them instead.
  if config.init_from and not os.path.exists(config.init_from) and not workdirs.saved_steps(workdir):
    raise FileNotFoundError(f'init_from={config.init_from!r}: no such file or directory')
  if config.tokenizer.json_file:
    try:
      text.load_tokenizer(config.tokenizer.json_file)
    except errors.InputError as e:
      raise errors.InputError(f'tokenizer.json_file: {e}') from e


def _check_writable(workdir: str) -> None:
  """The workdir, or the nearest folder above it that exists, takes new files (a read-only mount
  fails here, not at the first save); the folder is not created yet."""
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise NotADirectoryError(f'--workdir {workdir}: {existing} is a file, not a directory')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise errors.InputError(
      f'--workdir {workdir}: {existing} is not writable (a read-only file system, or no permission)'
    )


def finished_step(config: ml_collections.FrozenConfigDict, workdir: str) -> int | None:
  """The newest checkpoint's step if it is at (or past) training.num_train_steps, else None."""
  steps = workdirs.saved_steps(workdir) if os.path.isdir(workdir) else []
  if steps and steps[-1] >= config.training.num_train_steps:
    return steps[-1]
  return None
