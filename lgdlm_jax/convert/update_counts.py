"""torch AdamW's per-tensor update counts <-> lgdlm_jax's per-unit counts (lgdlm_jax.model.units).

torch.optim.AdamW keeps a `step` per parameter, and skips a parameter without a gradient (frozen in a
latentDLM mode, or out of the loss's reach) entirely, so the counts differ after a `sequential` or
`random` pretraining run. lgdlm_jax's pretraining optimizer keeps one count per unit (a whole leaf, or one
block slice of a stacked block leaf: one tensor of the reference). Counts come in through the same
mapping as the weights (each tensor filled with its count, then each Flax leaf reduced to its units,
which must each hold one count), so they land wherever the weights land; they go out by name.
"""

from collections.abc import Mapping
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

from lgdlm_jax.convert import mapping
from lgdlm_jax.model import units


def from_torch(
  counts: Mapping[str, int], state_dict: Mapping[str, Any], model_config: ml_collections.ConfigDict
) -> Any | None:
  """{state-dict name: update count} -> the params' tree of int32 unit counts; None when all are equal."""
  distinct = sorted(set(counts.values()))
  if len(distinct) <= 1:
    return None
  # Each tensor filled with the index of its count: a broadcast view, so only the stacked block leaves
  # take memory, one byte a parameter while there are at most 256 different counts.
  code_dtype = np.uint8 if len(distinct) <= 256 else np.int32
  code = {count: code_dtype(i) for i, count in enumerate(distinct)}
  filled = {name: np.broadcast_to(code[count], np.shape(state_dict[name])) for name, count in counts.items()}
  codes = to_units(mapping.torch_to_flax(filled, model_config))
  return jax.tree_util.tree_map(lambda c: np.asarray(distinct, np.int32)[c], codes)


def to_units(filled: Any) -> Any:
  """A params-shaped tree of per-element counts -> its unit counts; ConversionError naming the reference's
  tensor whose elements do not all hold one count."""
  out = {}
  for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(filled)).items():
    leaf = np.asarray(leaf)
    blocks = range(leaf.shape[0]) if units.is_block_parameter(path) else (None,)
    values = []
    for block in blocks:
      part = (leaf if block is None else leaf[block]).ravel()
      if part.size and (part != part[0]).any():
        raise mapping.ConversionError(
          f'the update counts of {mapping.torch_key(path, block)} are not one count '
          f'({sorted(set(part.tolist()))[:4]}): a unit of AdamW state must be one tensor of the reference'
        )
      values.append(part[0] if part.size else 0)
    out[path] = np.asarray(values if blocks[0] is not None else values[0]).reshape(units.unit_shape(path, leaf.shape))
  return flax.traverse_util.unflatten_dict(out)


def to_torch(unit_updates: Any) -> dict[str, int]:
  """The params' tree of unit counts -> {reference state-dict name: update count} (the parameters the
  reference has)."""
  counts = {}
  for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(unit_updates)).items():
    if not mapping.has_reference_counterpart(path):
      continue
    leaf = np.asarray(leaf)
    if units.is_block_parameter(path):
      counts.update({mapping.torch_key(path, i): int(leaf[i].ravel()[0]) for i in range(leaf.shape[0])})
    else:
      counts[mapping.torch_key(path)] = int(leaf)
  return counts


def filled(unit_updates: Any | None, params: Any, updates: int) -> Any:
  """The unit counts of `params`' tree: `unit_updates`, or every unit at `updates` for None; ConversionError
  if a leaf's counts do not have its unit shape."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  shapes = {path: units.unit_shape(path, np.shape(leaf)) for path, leaf in flat.items()}
  if unit_updates is None:
    return flax.traverse_util.unflatten_dict({p: np.full(s, updates, np.int32) for p, s in shapes.items()})
  given = flax.traverse_util.flatten_dict(flax.core.unfreeze(unit_updates))
  wrong = [
    f'{"/".join(p)} {np.shape(given[p]) if p in given else "missing"} (expected {s})'
    for p, s in shapes.items()
    if p not in given or np.shape(given[p]) != s
  ]
  if wrong or set(given) - set(shapes):
    extra = ['/'.join(p) + ' (unexpected)' for p in set(given) - set(shapes)]
    raise mapping.ConversionError(
      f'the per-unit update counts do not fit the parameters: {mapping.problem_list(wrong + extra)}'
    )
  return flax.traverse_util.unflatten_dict({p: np.asarray(given[p], np.int32) for p in shapes})


def unless_all(unit_updates: Any | None, updates: int) -> Any | None:
  """`unit_updates`, or None when every unit has had `updates` (AdamMoments' convention)."""
  if unit_updates is None or all(np.all(leaf == updates) for leaf in jax.tree_util.tree_leaves(unit_updates)):
    return None
  return unit_updates


def most(unit_updates: Any | None, updates: int) -> int:
  """The most updates any unit has had."""
  if unit_updates is None:
    return updates
  return max(updates, *(int(np.max(leaf)) for leaf in flax.traverse_util.flatten_dict(unit_updates).values()))
