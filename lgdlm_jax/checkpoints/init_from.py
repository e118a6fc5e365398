"""The `init_from` config key: a fresh run starts from a converted directory, a training workdir or
a PyTorch checkpoint (read safely: lgdlm_jax.convert.pickles).

    initial = init_from.load(config, workdir)      # before any work; None if unset or resuming
    state = init_from.apply(initial, state, shardings)

`load` reads and checks everything first (the path exists and is readable, no unsafe pickle, every
tensor fits config.model, and with `init_from_optimizer` the AdamW moments and step fit the run's
optimizer), raising one InputError naming the path. `apply` puts the parameters (as float32
master weights) and, with `init_from_optimizer`, the moments, update counts and step into the
freshly created state: the run continues mid-schedule, its first step being the source's next.
The data then start at the global batch that step implies (a checkpoint without a data item).
"""

import dataclasses
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from lgdlm_jax import errors
from lgdlm_jax.checkpoints import weight_sources as sources
from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.convert import moments as moments_lib
from lgdlm_jax.convert import update_counts


@dataclasses.dataclass(frozen=True)
class Initial:
  weights: sources.Weights
  with_optimizer: bool


def load(config: ml_collections.FrozenConfigDict, workdir: str) -> Initial | None:
  """The checked initial weights of a fresh run; None without init_from, or when `workdir` already
  has a checkpoint (the run resumes from that)."""
  if not config.init_from:
    return None
  if workdirs.saved_steps(workdir):
    logging.info(
      'init_from=%s is not used: %s has checkpoints, so the run resumes from the newest', config.init_from, workdir
    )
    return None
  try:
    weights = sources.read(config.init_from, model_config=config.model, with_moments=config.init_from_optimizer)
    if config.init_from_optimizer:
      _check_position(weights, config)
  except (errors.InputError, OSError) as e:
    raise errors.InputError(f'init_from={config.init_from}: {e}') from e
  return Initial(weights, config.init_from_optimizer)


def _check_position(weights: sources.Weights, config: ml_collections.FrozenConfigDict) -> None:
  """The source's step and update counts fit this run's gradient accumulation and length."""
  steps, updates = weights.steps_done, weights.moments.updates
  accumulation = config.training.gradient_accumulation_steps
  if steps is None:
    raise errors.InputError(f'the {weights.kind} holds AdamW moments but no step, so the schedule position is unknown')
  if config.loss.loss_type != 'cycle_vae':
    # The pretraining modes update once per step (no accumulation), and a step skipped for a non-finite
    # gradient advances the step without an update: a tensor may have had fewer updates than steps, never more.
    most = update_counts.most(weights.moments.unit_updates, updates)
    if most > steps:
      raise errors.InputError(
        f'its AdamW state has had {most} updates, more than the {steps} steps it is at: the optimizer state and '
        'the step are not of one checkpoint'
      )
  elif steps != updates * accumulation:
    raise errors.InputError(
      f'step {steps} (micro-batches) and {updates} optimizer updates do not fit training.gradient_accumulation_steps='
      f'{accumulation}: expected step = updates x {accumulation} (a checkpoint inside an accumulation group, or '
      'another accumulation setting)'
    )
  if steps >= config.training.num_train_steps:
    raise errors.InputError(
      f'it is at step {steps}, and training.num_train_steps={config.training.num_train_steps} leaves nothing to train'
    )


def apply(initial: Initial, state: Any, shardings: Any) -> Any:
  """The train state with the initial parameters (float32), and with the optimizer state and step
  when asked for, laid out on `shardings`."""
  float32 = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), tree)
  weights = initial.weights
  state = state.replace(params=float32(weights.params))
  if initial.with_optimizer:
    moments = dataclasses.replace(weights.moments, mu=float32(weights.moments.mu), nu=float32(weights.moments.nu))
    state = state.replace(
      step=np.int32(weights.steps_done),
      opt_state=moments_lib.into_opt_state(state.opt_state, moments, weights.steps_done),
    )
  return jax.device_put(state, shardings)


def describe(initial: Initial) -> str:
  weights = initial.weights
  if not initial.with_optimizer:
    return f'the parameters of the {weights.description}'
  moments = weights.moments
  updates = f'{moments.updates} updates'
  if moments.unit_updates is not None:
    counts = [int(c) for c in np.concatenate([np.ravel(u) for u in jax.tree_util.tree_leaves(moments.unit_updates)])]
    updates = f'{min(counts)} to {max(counts)} updates per tensor'
  return (
    f'the parameters, AdamW moments ({updates}) and step {weights.steps_done} of the '
    f'{weights.description}; the data start at global batch {weights.steps_done}'
  )
