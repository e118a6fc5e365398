"""Train the cycle_vae objective: python -m lgdlm_jax.main --config configs/smoke.py --workdir DIR
[--config.a.b=value ...]

Re-running the same command resumes from the newest checkpoint in DIR (a run already at
training.num_train_steps says so and exits without writing anything). Several processes (TPU pod
hosts, SLURM tasks, or --coordinator_address/--num_processes/--process_id) train one run together;
SIGTERM makes all of them save the same step and exit. A reference YAML file is a config like any
other: --config configs/reference_yaml.py:PATH.yaml, with the same --config.a.b=value overrides.
"""

from collections.abc import Sequence

from absl import flags

from lgdlm_jax import cli
from lgdlm_jax import config as config_lib
from lgdlm_jax.training import loop
from lgdlm_jax.training import preflight
from lgdlm_jax.training import runtime


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  cli.define_config_flag(flag_values, argv, 'configs/smoke.py', 'A get_config() Python file (FILE.py or FILE.py:arg).')
  flags.DEFINE_string(
    'workdir', 'workdir', 'Checkpoints, logs and TensorBoard events go here.', flag_values=flag_values
  )
  flags.DEFINE_string(
    'coordinator_address',
    None,
    'host:port of process 0, for multi-process runs outside Cloud TPU and SLURM (or LGDLM_COORDINATOR_ADDRESS).',
    flag_values=flag_values,
  )
  flags.DEFINE_integer('num_processes', None, 'Processes in the run (or LGDLM_NUM_PROCESSES).', flag_values=flag_values)
  flags.DEFINE_integer('process_id', None, 'This process, 0-based (or LGDLM_PROCESS_ID).', flag_values=flag_values)


def work(flag_values: flags.FlagValues, args: list[str]) -> None:
  if args:
    raise cli.UsageError(f'unexpected arguments: {" ".join(args)}')
  config = config_lib.finalize(flag_values.config)
  workdir = flag_values.workdir
  preflight.check_paths(config, workdir)
  done = preflight.finished_step(config, workdir)
  if done is not None:
    print(
      f'{workdir} is already at step {done} of {config.training.num_train_steps}: nothing to train '
      '(raise --config.training.num_train_steps to continue)',
      flush=True,
    )
    return
  group = runtime.from_env()
  if flag_values.coordinator_address is not None:
    group = runtime.ProcessGroup(flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id)
  runtime.maybe_initialize(group)
  loop.run(config, workdir)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(work, define_flags, argv, doc=__doc__)


if __name__ == '__main__':
  cli.main_exit(work, define_flags, __doc__)
