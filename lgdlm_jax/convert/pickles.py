"""The reference's torch.save files, read without importing or running any code they name.

A pickle names the classes and functions it rebuilds objects with, and unpickling calls them: a file
can run anything. torch.load(weights_only=True) allows only tensors and plain containers; on top of
that, the objects the reference itself pickles are allowed as inert stand-ins that only hold the
pickled attributes (no reference code is imported). Every other global is refused, naming it
(torch.serialization.get_unsafe_globals_in_checkpoint reads the names without unpickling), unless
the caller passes unsafe_pickle=True for a file it trusts.
"""

import pickle
import types
from typing import Any

from lgdlm_jax.convert import mapping


class PickleError(mapping.ConversionError):
  """A pickle cannot be read, or names code that lgdlm_jax will not run."""


class ReferenceObject:
  """An inert stand-in for an object of a reference class: the pickled attributes and nothing else."""

  reference_name = ''

  def __repr__(self) -> str:
    fields = ', '.join(f'{k}={v!r}' for k, v in vars(self).items())
    return f'<{self.reference_name} stand-in: {fields}>'


class TrainingState(ReferenceObject):
  """latentDLM's training progress (epoch, step, tokens, ...), pickled into its checkpoints."""

  reference_name = 'latentDLM_mmdit.checkpoints_mmdit.TrainingState'


# The classes the reference pickles into checkpoints, by the name a pickle refers to them with.
STAND_INS: dict[str, type[ReferenceObject]] = {cls.reference_name: cls for cls in (TrainingState,)}


class _StandInUnpickler(pickle.Unpickler):
  """With unsafe_pickle: the reference's own classes still become stand-ins, so its code need not be importable."""

  def find_class(self, module: str, name: str) -> Any:
    return STAND_INS.get(f'{module}.{name}') or super().find_class(module, name)


# torch.load's pickle_module: it subclasses this module's Unpickler.
_STAND_IN_PICKLE = types.ModuleType('lgdlm_jax_stand_in_pickle')
_STAND_IN_PICKLE.Unpickler = _StandInUnpickler
_STAND_IN_PICKLE.load = pickle.load


def load(path: str, unsafe_pickle: bool = False) -> Any:
  """The unpickled contents of a torch.save file (tensors on the CPU)."""
  import torch  # pylint: disable=g-import-not-at-top  (a tool dependency, needed only for pickles)

  try:
    if unsafe_pickle:
      return torch.load(path, map_location='cpu', weights_only=False, pickle_module=_STAND_IN_PICKLE)
    with torch.serialization.safe_globals([(cls, name) for name, cls in STAND_INS.items()]):
      try:
        return torch.load(path, map_location='cpu', weights_only=True)
      except pickle.UnpicklingError as e:
        if 'Weights only load failed' in str(e):
          raise PickleError(_refusal(path, e)) from e
        raise
  except PickleError:
    raise
  except pickle.UnpicklingError as e:
    raise PickleError(f'cannot unpickle {path}: {_first_line(e)}') from e
  except ModuleNotFoundError as e:  # only with unsafe_pickle: the file names code that is not installed
    raise PickleError(
      f'cannot unpickle {path} with --unsafe-pickle: it refers to module {e.name!r}, which is not importable'
    ) from e
  except (KeyError, IndexError) as e:  # torch's legacy unpickler on bytes that are no pickle at all
    raise PickleError(f'cannot read {path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)') from e
  except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
    raise PickleError(f'cannot read {path}: not a complete PyTorch checkpoint (truncated?): {_first_line(e)}') from e


def _refusal(path: str, error: Exception) -> str:
  """Called inside the safe_globals context, so the stand-ins' names are not listed as unsafe."""
  import torch  # pylint: disable=g-import-not-at-top

  try:
    names = ', '.join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
  except Exception:  # pylint: disable=broad-except  (only detail of the message is lost)
    names = ''
  if not names:
    names = next((line.strip() for line in str(error).splitlines() if 'GLOBAL' in line), 'unknown')
  return (
    f"{path} refers to code beyond tensors, plain containers and the reference's own classes: {names}. "
    'Unpickling it would run that code, so it was refused and nothing of it ran; pass --unsafe-pickle '
    'only if you trust the file.'
  )


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
