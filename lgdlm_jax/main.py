"""Entry point: python -m lgdlm_jax.main --config configs/smoke.py --workdir DIR [--config.a.b=value ...].

Trains the cycle_vae objective; re-running the same command resumes from the newest checkpoint in
DIR. Several processes (TPU pod hosts, SLURM tasks, or --coordinator_address/--num_processes/
--process_id) train one run together; SIGTERM makes all of them save the same step and exit.
Instead of --config, --config_yaml reads one of the reference's YAML files (with --override a.b=c).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from lgdlm_jax import config_yaml
from lgdlm_jax import distributed
from lgdlm_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/smoke.py', 'Path to a get_config() Python file.')
_CONFIG_YAML = flags.DEFINE_string('config_yaml', None, "A reference YAML config; replaces --config.")
_OVERRIDES = flags.DEFINE_multi_string('override', [], 'a.b=value overrides of --config_yaml.')
_WORKDIR = flags.DEFINE_string('workdir', 'workdir', 'Checkpoints, logs and TensorBoard events go here.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-process runs outside Cloud TPU and SLURM '
                                   '(or LGDLM_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run (or LGDLM_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0-based (or LGDLM_PROCESS_ID).')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG_YAML.value:
    config = config_yaml.load_reference_yaml(_CONFIG_YAML.value, _OVERRIDES.value)
  elif _OVERRIDES.value:
    raise app.UsageError('--override applies to --config_yaml; use --config.a.b=value with --config')
  else:
    config = _CONFIG.value
  group = distributed.from_env()
  if _COORDINATOR.value is not None:
    group = distributed.ProcessGroup(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  distributed.maybe_initialize(group)
  train.run(config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
