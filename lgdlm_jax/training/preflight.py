"""What `python -m lgdlm_jax.main` checks before any start-up work (jax.distributed, data, compiling).

- `check_paths`: the workdir is a directory or does not exist yet; every data directory and the
  init_from path exist. Each problem is one error naming the flag or key and the path.
- `finished_step`: the newest checkpoint's step when it is already at training.num_train_steps
  (read from the checkpoint folders' names), so that a finished run exits without writing anything.
"""

import os

import ml_collections

from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.data import packed_reader


def check_paths(config: ml_collections.FrozenConfigDict, workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir {workdir}: is a file, not a directory')
  data = config.data
  for key, path in (('data.data_dir', data.data_dir), ('data.token_dir', data.token_dir),
                    ('data.latent_dir', data.latent_dir)):
    if path and not os.path.isdir(path):
      raise FileNotFoundError(f'{key}={path!r}: no such directory')
  if data.data_dir and not packed_reader.is_packed(data.data_dir):
    for kind in ('tokens', 'latents'):
      folder = os.path.join(data.data_dir, kind, 'train')
      if not os.path.isdir(folder):
        raise FileNotFoundError(f'data.data_dir={data.data_dir!r}: no {packed_reader.MANIFEST} (packed data) and no '
                                f'{os.path.join(kind, "train")}/ (per-sample files)')
  # init_from is read only by a fresh run; a workdir with checkpoints resumes from them instead.
  if config.init_from and not os.path.exists(config.init_from) and not workdirs.saved_steps(workdir):
    raise FileNotFoundError(f'init_from={config.init_from!r}: no such file or directory')


def finished_step(config: ml_collections.FrozenConfigDict, workdir: str) -> int | None:
  """The newest checkpoint's step if it is at (or past) training.num_train_steps, else None."""
  steps = workdirs.saved_steps(workdir) if os.path.isdir(workdir) else []
  if steps and steps[-1] >= config.training.num_train_steps:
    return steps[-1]
  return None
