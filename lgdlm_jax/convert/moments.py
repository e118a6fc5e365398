"""AdamW's state both ways: torch's `optimizer.state_dict()` <-> optax's, through one neutral form.

torch.optim.AdamW keeps, per parameter, `exp_avg`, `exp_avg_sq` and `step` (its update count);
optax's adamw keeps `mu`, `nu` and `count` for the whole tree, nested inside whatever chain the
optimizer is (lgdlm_jax.training.optimizer: torch-style clipping, adamw, and optax.MultiSteps under gradient
accumulation). The update rules are the same (decoupled decay of the old parameter, bias correction
by the update count), so AdamMoments (updates, mu, nu) carries the state between them exactly.
torch's counts are per tensor; after latentDLM's pretraining modes (frozen groups) they differ, and
AdamMoments carries them per unit too (`unit_updates`, lgdlm_jax.convert.update_counts), for the
pretraining modes' optimizer, which keeps a count per unit (lgdlm_jax.training.freezing).

The reference builds AdamW over `trainer.parameters()` in one group, so the state's parameter index
i is the i-th tensor of the saved state dict (its parameters in registration order; the model has no
persistent buffers). A group that saved `param_names` (torch >= 2.6 with named parameters) is
matched by name instead.
"""

from collections.abc import Mapping
import dataclasses
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from lgdlm_jax.convert import files
from lgdlm_jax.convert import mapping
from lgdlm_jax.convert import update_counts

# optax state fields, by name: the moments and update counts, and MultiSteps' position in its group.
_MOMENT_FIELDS = ('mu', 'nu')
_COUNT_FIELDS = ('count', 'gradient_step')
_MICRO_STEP_FIELD = 'mini_step'
_ADAM_STATE_KEYS = frozenset(('count', 'mu', 'nu'))
# The pretraining modes' AdamW (lgdlm_jax.training.freezing.FreezableAdamState): a count per unit beside `count`.
UNIT_COUNT_FIELD = 'unit_count'


@dataclasses.dataclass(frozen=True)
class AdamMoments:
  updates: int  # optimizer updates applied: torch's per-parameter `step`, optax's `count`
  mu: Any  # first moments (exp_avg) as a Flax parameter tree of numpy arrays
  nu: Any  # second moments (exp_avg_sq), the same tree
  hyperparameters: dict[str, Any]  # lr, betas, eps, weight_decay of the source (for the report), if known
  # Each unit's own update count (a tensor of the reference: lgdlm_jax.model.units) as the params' tree of
  # int32 arrays; None when every unit has had `updates`.
  unit_updates: Any = None


def from_torch(
  optimizer_state: Mapping[str, Any], state_dict: Mapping[str, np.ndarray], model_config: ml_collections.ConfigDict
) -> AdamMoments:
  """The moments of a torch AdamW state dict over the parameters of `state_dict` (in its saved
  order, prefixes stripped); ConversionError naming what does not fit."""
  groups = optimizer_state.get('param_groups')
  per_index = optimizer_state.get('state')
  if not isinstance(groups, list) or not groups or not isinstance(per_index, Mapping):
    raise mapping.ConversionError('the optimizer state has no param_groups/state: not a torch optimizer state dict')
  if any(group.get('amsgrad') for group in groups):
    raise mapping.ConversionError(
      "the optimizer state is AMSGrad's (amsgrad=True), which lgdlm_jax's AdamW does not run"
    )
  exp_avg: dict[str, np.ndarray] = {}
  exp_avg_sq: dict[str, np.ndarray] = {}
  counts: dict[str, int] = {}
  for index, name in _index_names(groups, list(state_dict)).items():
    state = per_index.get(index)
    shape = tuple(np.shape(state_dict[name]))
    if state is None:  # torch keeps no state for a parameter that never had a gradient: zero moments
      exp_avg[name] = exp_avg_sq[name] = np.zeros(shape, np.float32)
      counts[name] = 0
      continue
    if not {'exp_avg', 'exp_avg_sq', 'step'} <= state.keys():
      raise mapping.ConversionError(
        f"the optimizer state of {name} has {sorted(state)}, not AdamW's exp_avg, "
        'exp_avg_sq and step: only Adam/AdamW states convert'
      )
    for moments, key in ((exp_avg, 'exp_avg'), (exp_avg_sq, 'exp_avg_sq')):
      moments[name] = np.asarray(files.to_numpy(state[key]), np.float32)
      if moments[name].shape != shape:
        raise mapping.ConversionError(
          f"the optimizer's {key} of parameter {index} has shape {moments[name].shape}, "
          f"but that parameter, {name}, has {shape}: the state is not this model's"
        )
    counts[name] = int(float(state['step']))  # a 0-d tensor, or a number in older torch versions
  if not any(counts.values()):
    raise mapping.ConversionError('the optimizer state holds no moments: no update was applied')
  group = groups[0]
  hyperparameters = {k: group[k] for k in ('lr', 'betas', 'eps', 'weight_decay') if k in group}
  # `updates` is the most any tensor had (the one count of the cycle objective's optax AdamW); the
  # per-tensor counts differ for tensors that missed gradients, and travel as unit_updates.
  return AdamMoments(
    max(counts.values()),
    mapping.torch_to_flax(exp_avg, model_config),
    mapping.torch_to_flax(exp_avg_sq, model_config),
    hyperparameters,
    update_counts.from_torch(counts, state_dict, model_config),
  )


def to_torch(
  moments: AdamMoments,
  model_config: ml_collections.ConfigDict,
  *,
  lr: float,
  betas: tuple[float, float],
  eps: float,
  weight_decay: float,
) -> dict[str, Any]:
  """torch.optim.AdamW's state_dict() over the reference model's parameters, in its parameter order
  (what the reference trainer's `optimizer.load_state_dict` expects); `lr` is the next step's."""
  import torch  # pylint: disable=g-import-not-at-top  (a tool dependency)

  names = mapping.reference_parameter_order(model_config)
  exp_avg = mapping.flax_to_torch(moments.mu, model_config)
  exp_avg_sq = mapping.flax_to_torch(moments.nu, model_config)
  # The group's other settings (foreach, fused, maximize, ...) as this torch version writes them.
  group = torch.optim.AdamW(
    [torch.zeros(1, requires_grad=True)], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
  ).state_dict()['param_groups'][0]
  group['params'] = list(range(len(names)))
  if moments.unit_updates is None:
    counts = dict.fromkeys(names, moments.updates)
  else:
    counts = update_counts.to_torch(moments.unit_updates)
  # torch keeps no state for a tensor that has had no update (it never had a gradient).
  state = {
    i: {
      'step': torch.tensor(float(counts[name])),
      'exp_avg': files.to_tensor(np.asarray(exp_avg[name], np.float32)),
      'exp_avg_sq': files.to_tensor(np.asarray(exp_avg_sq[name], np.float32)),
    }
    for i, name in enumerate(names)
    if counts[name]
  }
  return {'state': state, 'param_groups': [group]}


def into_opt_state(opt_state: Any, moments: AdamMoments, steps_done: int | None = None) -> Any:
  """`opt_state` (an optax state of lgdlm_jax.training.optimizer's chain, any nesting) holding `moments`: the
  AdamW moments and every update count set, and gradient accumulation at the start of a group.

  The pretraining modes' AdamW (a `unit_count` field) takes each unit's count from moments.unit_updates
  (every unit at `updates` when None) and its `count`, the learning rate's position, from `steps_done`:
  latentDLM's learning rate follows its step, which a step skipped for a non-finite gradient advances
  without an update, so the step, not an update count, says where its schedule is. (A run of lgdlm_jax
  keeps count = step unless it skipped a step; then the continuation takes the reference's position.)
  """
  values = {
    'mu': moments.mu,
    'nu': moments.nu,
    _MICRO_STEP_FIELD: np.int32(0),
    **{field: np.int32(moments.updates) for field in _COUNT_FIELDS},
  }
  if _has_field(opt_state, UNIT_COUNT_FIELD):
    if steps_done is None:
      raise mapping.ConversionError('the per-unit AdamW state needs the step the source is at (steps_done)')
    values[UNIT_COUNT_FIELD] = update_counts.filled(moments.unit_updates, moments.mu, moments.updates)
    values['count'] = np.int32(steps_done)
  elif moments.unit_updates is not None:
    # Logged, not refused: tensors that never had a gradient (count 0, zero moments) are common, and the
    # difference is only the bias correction of the tensors that had fewer updates.
    counts = update_counts.to_torch(moments.unit_updates)
    logging.warning(
      "the source's tensors had between %d and %d AdamW updates each; this optimizer keeps one count, so all "
      'continue from %d (the bias correction of those with fewer updates differs from torch continuing)',
      min(counts.values()),
      max(counts.values()),
      moments.updates,
    )
  found: set[str] = set()
  opt_state = _set_fields(opt_state, values, found)
  if not set(_MOMENT_FIELDS) <= found:
    raise mapping.ConversionError('the optimizer has no AdamW state (mu, nu) to set')
  return opt_state


def _has_field(tree: Any, field: str) -> bool:
  """Whether an optax state (NamedTuples at any depth) has a field named `field`."""
  if isinstance(tree, tuple) and hasattr(tree, '_fields'):
    return field in tree._fields or any(_has_field(getattr(tree, f), field) for f in tree._fields)
  if isinstance(tree, (tuple, list)):
    return any(_has_field(child, field) for child in tree)
  return False


def _set_fields(tree: Any, values: Mapping[str, Any], found: set[str]) -> Any:
  """`tree` with every optax state field (a NamedTuple field, at any depth) named in `values`
  replaced; the names replaced are added to `found`. (optax.tree_utils.tree_set stops at the first
  level that matches, so it misses the AdamW state inside optax.MultiSteps.)"""
  if isinstance(tree, tuple) and hasattr(tree, '_fields'):
    replaced = {f: values[f] for f in tree._fields if f in values}
    found.update(replaced)
    return tree._replace(
      **replaced, **{f: _set_fields(getattr(tree, f), values, found) for f in tree._fields if f not in values}
    )
  if isinstance(tree, (tuple, list)):
    return type(tree)(_set_fields(child, values, found) for child in tree)
  return tree  # arrays, and parameter trees (the moments, MultiSteps' accumulated gradient)


def adam_state_path(tree: Any, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
  """Where, in an Orbax metadata or restored tree of an optimizer state (NamedTuples become dicts
  keyed by field name), AdamW's {count, mu, nu} sits; None if nowhere."""
  if isinstance(tree, Mapping):
    if _ADAM_STATE_KEYS <= tree.keys():
      return path
    children = tree.items()
  elif isinstance(tree, (list, tuple)):
    children = enumerate(tree)
  else:
    return None
  for key, child in children:
    found = adam_state_path(child, path + (key,))
    if found is not None:
      return found
  return None


def _index_names(groups: list[Mapping[str, Any]], parameter_names: list[str]) -> dict[int, str]:
  """{optimizer parameter index: state-dict name}."""
  indices = [i for group in groups for i in group.get('params', ())]
  if all('param_names' in group for group in groups):
    names = [_without_prefixes(n, parameter_names) for group in groups for n in group['param_names']]
    unknown = sorted(set(names) - set(parameter_names))
    if unknown:
      raise mapping.ConversionError(f'the optimizer state names parameters the state dict lacks: {unknown[:5]}')
    return dict(zip(indices, names))
  if len(groups) > 1:
    raise mapping.ConversionError(
      f'the optimizer state has {len(groups)} parameter groups without param_names, so '
      'its parameters cannot be matched to the state dict (the reference uses one group)'
    )
  if len(indices) != len(parameter_names):
    raise mapping.ConversionError(
      f'the optimizer state has {len(indices)} parameters, the state dict '
      f"{len(parameter_names)}: they are not the same model's"
    )
  return dict(zip(indices, parameter_names))


def _without_prefixes(name: str, parameter_names: list[str]) -> str:
  """A name from param_names without the wrapper prefixes the state dict's keys lost."""
  while name not in parameter_names and name.startswith(files.PREFIXES):
    name = name.split('.', 1)[1]
  return name
