"""Orbax checkpoints in the workdir: the train state and the data-iterator position, saved together.

Saves are asynchronous (training continues while the arrays are written) and are restored onto the
same shardings the state was created with. Which ones are kept is one Orbax preservation policy:
the newest `training.keep_checkpoints`, and, with `training.keep_best_checkpoints` N > 0, also the
N best by `training.best_checkpoint_metric` among the checkpoints saved at an evaluation (which
store every validation metric of that step).
"""

import math
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

CHECKPOINTS_DIR = 'checkpoints'  # under the workdir: one folder per saved step
STATE_ITEM = 'state'  # the TrainState; 'data' holds the iterator position
DATA_ITEM = 'data'
# Metric-name endings for which higher is better; every other ranking metric is a loss.
HIGHER_IS_BETTER = ('_acc', '_cosine')


def higher_is_better(metric: str) -> bool:
  return metric.endswith(HIGHER_IS_BETTER)


def keeps_best(config: ml_collections.ConfigDict) -> bool:
  return config.training.keep_best_checkpoints > 0


def _policy(config: ml_collections.ConfigDict) -> preservation_policy.PreservationPolicy:
  latest = preservation_policy.LatestN(n=config.training.keep_checkpoints)
  if not keeps_best(config):
    return latest
  metric = config.training.best_checkpoint_metric
  best = preservation_policy.BestN(
      get_metric_fn=lambda metrics: metrics[metric], reverse=not higher_is_better(metric),
      n=config.training.keep_best_checkpoints,
      keep_checkpoints_without_metrics=False)  # those are the newest ones' business
  return preservation_policy.AnyPreservationPolicy(policies=[latest, best])


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      preservation_policy=_policy(config),
      enable_async_checkpointing=True,
      create=True,
  )
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR), options=options,
                               item_names=(STATE_ITEM, DATA_ITEM))


def ranking_metrics(val_metrics: dict[str, float] | None, config: ml_collections.ConfigDict) -> dict[str, float] | None:
  """The metrics to store with a checkpoint for best-N ranking: the validation metrics of that step
  when best checkpoints are kept and the ranking metric is finite; None otherwise (such a
  checkpoint is kept only while it is among the newest)."""
  if val_metrics is None or not keeps_best(config):
    return None
  value = val_metrics.get(config.training.best_checkpoint_metric)
  if value is None or not math.isfinite(value):
    return None
  return dict(val_metrics)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict[str, Any],
         metrics: dict[str, float] | None = None) -> None:
  """Starts an asynchronous save of `state` and the iterator position at `step` (with `metrics`
  from `ranking_metrics`, for the best-N policy)."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(data_state)), metrics=metrics)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
  """(state, data_state) of the newest checkpoint, onto abstract_state's shardings; None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored.state, restored.data


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
