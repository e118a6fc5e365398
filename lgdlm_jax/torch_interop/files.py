"""The reference's checkpoint files: `.pt` / `.pth` pickles (torch.save) and `.safetensors`.

read_checkpoint returns the model's state dict as numpy arrays in their stored dtype (bfloat16 as
ml_dtypes.bfloat16), unwrapped from the trainer's dict and free of wrapper prefixes, and says what
it unwrapped and stripped. Pickles are read with `weights_only=True` unless the caller allows
more. torch is imported only for pickles, so safetensors files need no torch.
"""

import dataclasses
import os
import pickle
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from lgdlm_jax import convert

# Where the reference's trainers keep the weights inside a checkpoint dict, in the order tried.
WRAPPER_KEYS = ('model_state_dict', 'state_dict', 'model')
# DDP, torch.compile and trainer wrappers; stripped only when every key carries one.
PREFIXES = ('module.', '_orig_mod.', 'model.')
# Where the reference's trainers keep their config next to the weights.
CONFIG_KEYS = ('config', 'cfg')
# What the reference writes into a run directory, in the order its load_full_model looks for them.
DIRECTORY_FILES = ('model_final.pth', 'model.pth', 'checkpoint.pt', 'model.safetensors')
SAFETENSORS_SUFFIX = '.safetensors'


class CheckpointFileError(convert.ConversionError):
  """A checkpoint file cannot be read, or holds no state dict."""


@dataclasses.dataclass(frozen=True)
class TorchCheckpoint:
  path: str
  state_dict: dict[str, np.ndarray]
  unwrapped: tuple[str, ...]  # the dict keys descended into, outermost first
  stripped: tuple[str, ...]  # the prefixes removed from every key, in order
  saved_config: dict[str, Any] | None  # the config the trainer stored beside the weights


def read_checkpoint(path: str, unsafe_pickle: bool = False) -> TorchCheckpoint:
  """Reads a checkpoint file, or the reference's file in a run directory."""
  path = _resolve(path)
  if path.endswith(SAFETENSORS_SUFFIX):
    try:
      contents: Any = safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError) as e:
      raise CheckpointFileError(f'cannot read {path}: not a complete safetensors file (truncated?): {e}') from e
  else:
    contents = _load_pickle(path, unsafe_pickle)
  saved_config = _saved_config(contents)
  state_dict, unwrapped = _unwrap(contents, path)
  state_dict, stripped = _strip_prefixes(state_dict)
  return TorchCheckpoint(path, state_dict, unwrapped, stripped, saved_config)


def write_state_dict(path: str, state_dict: dict[str, np.ndarray]) -> None:
  """A bare state dict: safetensors for a `.safetensors` path, torch.save otherwise."""
  if path.endswith(SAFETENSORS_SUFFIX):
    safetensors.numpy.save_file({k: np.asarray(v, order='C') for k, v in state_dict.items()}, path)
    return
  import torch
  torch.save({k: to_tensor(v) for k, v in state_dict.items()}, path)


def to_tensor(array: np.ndarray) -> Any:
  """numpy -> torch.Tensor, bfloat16 included (torch.from_numpy does not know ml_dtypes)."""
  import torch
  array = np.asarray(array, order='C')  # not ascontiguousarray: it makes 0-d arrays 1-d
  if array.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(array)


def _to_numpy(tensor: Any) -> np.ndarray:
  import torch
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:
    return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _resolve(path: str) -> str:
  if not os.path.isdir(path):
    if not os.path.isfile(path):
      raise CheckpointFileError(f'{path} does not exist')
    return path
  for name in DIRECTORY_FILES:
    if os.path.isfile(os.path.join(path, name)):
      return os.path.join(path, name)
  raise CheckpointFileError(f'{path} is a directory without any of {", ".join(DIRECTORY_FILES)}')


def _load_pickle(path: str, unsafe_pickle: bool) -> Any:
  import torch
  try:
    return torch.load(path, map_location='cpu', weights_only=not unsafe_pickle)
  except pickle.UnpicklingError as e:
    if not unsafe_pickle and 'Weights only load failed' in str(e):
      raise CheckpointFileError(_refusal(path, e)) from e
    raise CheckpointFileError(f'cannot unpickle {path}: {e}') from e
  except ModuleNotFoundError as e:
    raise CheckpointFileError(
        f'cannot unpickle {path}: it refers to module {e.name!r}, which is not importable; put the code '
        f'that wrote it (e.g. the reference repository) on PYTHONPATH') from e
  except (RuntimeError, EOFError, OSError, ValueError) as e:
    raise CheckpointFileError(f'cannot read {path}: not a complete PyTorch checkpoint (truncated?): '
                              f'{str(e).splitlines()[0]}') from e


def _refusal(path: str, error: Exception) -> str:
  import torch
  try:
    needs = ', '.join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
  except Exception:  # any failure here only loses detail from the message
    needs = str(error).splitlines()[-1]
  return (f'{path} holds Python objects beyond tensors and plain containers ({needs}); loading it '
          'would unpickle arbitrary code, so it was read with weights_only=True and refused. If you '
          'trust the file, pass --unsafe-pickle.')


def _saved_config(contents: Any) -> dict[str, Any] | None:
  if isinstance(contents, dict):
    for key in CONFIG_KEYS:
      if isinstance(contents.get(key), dict):
        return contents[key]
  return None


def _is_state_dict(value: Any) -> bool:
  return (isinstance(value, dict) and bool(value) and all(isinstance(k, str) for k in value)
          and all(hasattr(v, 'shape') for v in value.values()))


def _unwrap(contents: Any, path: str) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
  unwrapped: list[str] = []
  while not _is_state_dict(contents):
    if hasattr(contents, 'state_dict') and callable(contents.state_dict):  # a whole pickled module
      contents = contents.state_dict()
      unwrapped.append('state_dict()')
      continue
    key = next((k for k in WRAPPER_KEYS if isinstance(contents, dict) and k in contents), None)
    if key is None:
      found = sorted(contents)[:12] if isinstance(contents, dict) else type(contents).__name__
      raise CheckpointFileError(f'{path} holds no state dict: expected tensors by name or one of the '
                                f'keys {", ".join(WRAPPER_KEYS)}; found {found}')
    contents = contents[key]
    unwrapped.append(key)
  state_dict = {k: v if isinstance(v, np.ndarray) else _to_numpy(v) for k, v in contents.items()}
  return state_dict, tuple(unwrapped)


def _strip_prefixes(state_dict: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
  stripped: list[str] = []
  while True:
    prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state_dict)), None)
    if prefix is None:
      return state_dict, tuple(stripped)
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    stripped.append(prefix)
