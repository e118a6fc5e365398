"""One set-up for every user of the train step: the training loop, the benchmark and the ahead-of-time compile.

    setup = build(config)                          # or build(config, topology='v5e:2x4'): devices it lacks
    state, shardings = setup.create_state(rng)     # or setup.abstract_state(rng): shapes only
    programs, eval_fn, sample_eval_fn = setup.compile(shardings)

`build` runs the chain once, in one order: finalize, global batch sizes for the processes, the device
checks, the model's 'auto' values resolved for the platform, model, optimizer, mesh. Written once, so
that what the benchmark and the AOT compile measure is what training runs.
"""

import dataclasses
from typing import Any

from absl import logging
import jax
import ml_collections
import optax

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.model import platform as model_platform
from lgdlm_jax.training import aot
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step as step_lib


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the train step is built from; the programs are made by `compile`."""

  config: ml_collections.FrozenConfigDict  # validated, global batch sizes; 'auto' kept as config.json records it
  resolved: ml_collections.FrozenConfigDict  # the same with the model's 'auto' values resolved for `platform`
  devices: list[Any]
  platform: str  # 'cpu', 'gpu', 'tpu'
  model: model_lib.MultimodalMMDiT
  optimizer: optax.GradientTransformation
  mesh: jax.sharding.Mesh

  def abstract_state(self, rng: jax.Array) -> tuple[step_lib.TrainState, Any]:
    """The train state's shapes and dtypes (nothing allocated) and its shardings."""
    return step_lib.abstract_state_and_shardings(self.resolved, self.model, self.optimizer, self.mesh, rng)

  def create_state(self, rng: jax.Array) -> tuple[step_lib.TrainState, Any]:
    """The train state, created directly in its shardings, and the shardings."""
    return step_lib.create_sharded_state(self.resolved, self.model, self.optimizer, self.mesh, rng)

  def compile(self, state_shardings: Any) -> tuple[step_lib.TrainPrograms, Any, Any]:
    """The train-step programs, the validation-loss step and the sampler evaluation (step.compile_steps)."""
    return step_lib.compile_steps(self.resolved, self.model, self.optimizer, self.mesh, state_shardings)


def build(config: ml_collections.ConfigDict, topology: str = '') -> Setup:
  """The set-up for this machine's devices, or for the accelerators `topology` names (lgdlm_jax.training.aot)."""
  config = config_lib.finalize(config)
  if topology:
    devices, platform = aot.target_devices(topology)
    process_count = aot.processes(devices)
  else:
    devices, platform, process_count = jax.devices(), jax.default_backend(), jax.process_count()
  config = config_lib.for_processes(config, process_count)
  config_lib.check_devices(config, len(devices), process_count)
  resolved = model_platform.resolve(config, platform)
  model_config = resolved.model
  logging.info(
    'Attention: %s (model.attention=%s); %d of %d blocks per scan iteration (model.scan_unroll=%d)',
    model_config.attention,
    config.model.attention,
    min(model_config.scan_unroll, model_config.n_blocks),
    model_config.n_blocks,
    config.model.scan_unroll,
  )
  return Setup(
    config=config,
    resolved=resolved,
    devices=devices,
    platform=platform,
    model=model_lib.MultimodalMMDiT(model_config),
    optimizer=optimizer_lib.make_optimizer(config),
    mesh=sharding.make_mesh(config, devices),
  )
