"""Every checkpoint layout the reference writes, read safely: the weights, optimizer state and step.

Inputs (`read_checkpoint(path)`):
- a file: `.pt` / `.pth` (torch.save, read by lgdlm_jax.convert.pickles) or `.safetensors`;
- the cycle trainer's run directory `RUN/` or `RUN/checkpoints/`: `step_N.pt` every
  `logging.save_every` steps and `latest.pt` (the newest by default, or `step=N`);
- latentDLM's run directory (`RUN/latest/checkpoint.pt`, the newest) or one of its checkpoint
  directories (`model_final.pth`, `model.pth` or `checkpoint.pt`, in the order its loader tries them).

The weights come back as numpy arrays in their stored dtype (bfloat16 as ml_dtypes.bfloat16),
unwrapped from the trainer's dict and free of wrapper prefixes, in the file's order (which is the
reference model's parameter order). latentDLM's trainer saves its text noise schedule's buffers
(`text_noise_schedule.log_prior`, ...) beside `model.*`: constants of its trainer, not parameters of
the model (nor of its optimizer), so they are set aside and named. The step is converted to
lgdlm_jax's numbering: micro-batches applied. The cycle trainer saves after micro-batch N with
`step: N` (it logs its first update as step 0), so that is N + 1 here; latentDLM's
TrainingState.step already counts the micro-batches done.
"""

import dataclasses
import os
import re
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from lgdlm_jax.convert import mapping
from lgdlm_jax.convert import pickles

# Where the reference's trainers keep the weights inside a checkpoint dict, in the order tried.
WRAPPER_KEYS = ('model_state_dict', 'state_dict', 'model')
# DDP, torch.compile and trainer wrappers; stripped only when every key carries one.
PREFIXES = ('module.', '_orig_mod.', 'model.')
# latentDLM's trainer's buffers beside its `model.` keys (its text noise schedule), behind any wrapper prefix.
TRAINER_BUFFERS = re.compile(r'^((module|_orig_mod)\.)*text_noise_schedule\.')
# Where the reference's trainers keep their config next to the weights.
CONFIG_KEYS = ('config', 'cfg')
OPTIMIZER_KEY = 'optimizer_state_dict'
# latentDLM's training progress objects: `state` in checkpoint.pt, `training_state` in model.pth.
TRAINING_STATE_KEYS = ('state', 'training_state')
# latentDLM's checkpoint directory, in the order its load_full_model looks for the files.
DIRECTORY_FILES = ('model_final.pth', 'model.pth', 'checkpoint.pt', 'model.safetensors')
LATENTDLM_NEWEST = 'latest'  # RUN/latest/ is rewritten at every save; -250k, -500k, -1M are kept
CYCLE_CHECKPOINTS_DIR = 'checkpoints'
CYCLE_LATEST = 'latest.pt'
CYCLE_STEP_FILE = re.compile(r'^step_(\d+)\.pt$')
SAFETENSORS_SUFFIX = '.safetensors'


class CheckpointFileError(mapping.ConversionError):
  """A checkpoint file cannot be found or read, or holds no state dict."""


@dataclasses.dataclass(frozen=True)
class TorchCheckpoint:
  path: str  # the file read
  chosen: str  # how it was found, e.g. "the newest of the cycle trainer's run directory RUN"
  state_dict: dict[str, np.ndarray]  # in the file's order
  unwrapped: tuple[str, ...]  # the dict keys descended into, outermost first
  set_aside: tuple[str, ...]  # the trainer's buffers left out of state_dict (TRAINER_BUFFERS)
  stripped: tuple[str, ...]  # the prefixes removed from every key, in order
  saved_config: dict[str, Any] | None  # the config the trainer stored beside the weights
  optimizer_state: dict[str, Any] | None  # torch's optimizer.state_dict(), tensors as they were saved
  steps_done: int | None  # micro-batches applied, in lgdlm_jax's numbering
  step_source: str  # where steps_done came from, or why it is unknown


def read_checkpoint(path: str, unsafe_pickle: bool = False, step: int | None = None) -> TorchCheckpoint:
  """Reads a checkpoint file or run directory (see the module docstring); `step` picks step_N.pt."""
  path, chosen = resolve(path, step)
  if path.endswith(SAFETENSORS_SUFFIX):
    try:
      contents: Any = safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError) as e:
      raise CheckpointFileError(f'cannot read {path}: not a complete safetensors file (truncated?): {e}') from e
  else:
    contents = pickles.load(path, unsafe_pickle)
  state_dict, unwrapped = _unwrap(contents, path)
  set_aside = tuple(k for k in state_dict if TRAINER_BUFFERS.match(k))
  state_dict, stripped = _strip_prefixes({k: v for k, v in state_dict.items() if k not in set_aside})
  steps_done, step_source = _steps_done(contents)
  top = contents if isinstance(contents, dict) else {}
  optimizer_state = top.get(OPTIMIZER_KEY) if isinstance(top.get(OPTIMIZER_KEY), dict) else None
  saved_config = next((top[k] for k in CONFIG_KEYS if isinstance(top.get(k), dict)), None)
  return TorchCheckpoint(
    path, chosen, state_dict, unwrapped, set_aside, stripped, saved_config, optimizer_state, steps_done, step_source
  )


def resolve(path: str, step: int | None = None) -> tuple[str, str]:
  """(the checkpoint file `path` stands for, how it was chosen)."""
  if os.path.isfile(path):
    if step is not None:
      raise CheckpointFileError(f'--step {step} picks a file of a run directory, but {path} is a file')
    return path, 'the file given'
  if not os.path.isdir(path):
    raise CheckpointFileError(f'{path} does not exist')
  for directory in (os.path.join(path, CYCLE_CHECKPOINTS_DIR), path):
    steps = _cycle_steps(directory)
    if steps or os.path.isfile(os.path.join(directory, CYCLE_LATEST)):
      return _cycle_file(directory, steps, step)
  if step is not None:
    raise CheckpointFileError(
      f"--step {step} picks step_N.pt of the cycle trainer's run directory; {path} has no "
      f'{CYCLE_CHECKPOINTS_DIR}/step_N.pt'
    )
  newest = os.path.join(path, LATENTDLM_NEWEST)
  for directory, chosen in (
    (path, 'the file of the checkpoint directory given'),
    (newest, f"latentDLM's newest checkpoint ({LATENTDLM_NEWEST}/) of the run directory"),
  ):
    for name in DIRECTORY_FILES:
      if os.path.isfile(os.path.join(directory, name)):
        return os.path.join(directory, name), chosen
  raise CheckpointFileError(
    f"{path} is a directory without a checkpoint: expected the cycle trainer's {CYCLE_CHECKPOINTS_DIR}/latest.pt or "
    f"step_N.pt, latentDLM's {LATENTDLM_NEWEST}/checkpoint.pt, or one of {', '.join(DIRECTORY_FILES)}"
  )


def _cycle_steps(directory: str) -> dict[int, str]:
  if not os.path.isdir(directory):
    return {}
  matches = (CYCLE_STEP_FILE.match(name) for name in os.listdir(directory))
  return {int(m.group(1)): os.path.join(directory, m.group(0)) for m in matches if m}


def _cycle_file(directory: str, steps: dict[int, str], step: int | None) -> tuple[str, str]:
  run = "the cycle trainer's run directory"
  if step is not None:
    if step not in steps:
      raise CheckpointFileError(f'{directory} has no step_{step}.pt; it has steps {sorted(steps)}')
    return steps[step], f'step {step} of {run}'
  latest = os.path.join(directory, CYCLE_LATEST)
  if os.path.isfile(latest):  # rewritten at every save, so it is the newest
    return latest, f'the newest checkpoint ({CYCLE_LATEST}) of {run}'
  return steps[max(steps)], f'the newest checkpoint (step_{max(steps)}.pt) of {run}'


def to_tensor(array: np.ndarray) -> Any:
  """numpy -> torch.Tensor, bfloat16 included (torch.from_numpy does not know ml_dtypes)."""
  import torch  # pylint: disable=g-import-not-at-top

  array = np.asarray(array, order='C')  # not ascontiguousarray: it makes 0-d arrays 1-d
  if array.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(array)


def to_numpy(tensor: Any) -> np.ndarray:
  """torch.Tensor (or an array already) -> numpy, bfloat16 as ml_dtypes.bfloat16."""
  if isinstance(tensor, np.ndarray):
    return tensor
  import torch  # pylint: disable=g-import-not-at-top

  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:
    return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _steps_done(contents: Any) -> tuple[int | None, str]:
  if not isinstance(contents, dict):
    return None, 'the file holds no step'
  step = contents.get('step')
  if isinstance(step, int) and not isinstance(step, bool):
    return step + 1, (
      f"the cycle trainer's step {step}, the 0-based index of the last micro-batch applied "
      f'(its first update is step 0), is {step + 1} micro-batches done'
    )
  for key in TRAINING_STATE_KEYS:
    state = contents.get(key)
    if isinstance(state, pickles.TrainingState) and isinstance(getattr(state, 'step', None), int):
      return state.step, f"latentDLM's {key}.step {state.step} counts the micro-batches done"
  return None, 'the file holds no step'


def _is_state_dict(value: Any) -> bool:
  return (
    isinstance(value, dict)
    and bool(value)
    and all(isinstance(k, str) for k in value)
    and all(hasattr(v, 'shape') for v in value.values())
  )


def _unwrap(contents: Any, path: str) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
  unwrapped: list[str] = []
  while not _is_state_dict(contents):
    if hasattr(contents, 'state_dict') and callable(contents.state_dict):  # a whole pickled module
      contents = contents.state_dict()
      unwrapped.append('state_dict()')
      continue
    key = next((k for k in WRAPPER_KEYS if isinstance(contents, dict) and k in contents), None)
    if key is None:
      found = sorted(map(str, contents))[:12] if isinstance(contents, dict) else type(contents).__name__
      raise CheckpointFileError(
        f'{path} holds no state dict: expected tensors by name or one of the '
        f'keys {", ".join(WRAPPER_KEYS)}; found {found}'
      )
    contents = contents[key]
    unwrapped.append(key)
  return {k: to_numpy(v) for k, v in contents.items()}, tuple(unwrapped)


def _strip_prefixes(state_dict: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
  stripped: list[str] = []
  while True:
    prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state_dict)), None)
    if prefix is None:
      return state_dict, tuple(stripped)
    state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    stripped.append(prefix)
