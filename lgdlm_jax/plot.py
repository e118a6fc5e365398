"""Plot training logs: python -m lgdlm_jax.plot WORKDIR [WORKDIR ...] --out FILE.png

Draws every loss term (training, and validation as dashed lines with dots), the cycle weights, the
validation sampler metrics, the learning rate, the gradient norm and the non-finite steps of each
WORKDIR's training_log.jsonl into one PNG, several runs overlaid (one colour per run, labelled by
its directory name). Panels no run has values for are left out. Training writes the same plot of
its own log to WORKDIR/training_log.png at each evaluation.
"""

from collections.abc import Sequence

from absl import flags

from lgdlm_jax import cli
from lgdlm_jax.training import log_plot


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  flags.DEFINE_string('out', None, 'The PNG file to write.', flag_values=flag_values)


def work(flag_values: flags.FlagValues, workdirs: list[str]) -> None:
  if not workdirs:
    raise cli.UsageError('expected one or more training workdirs')
  if not flag_values.out:
    raise cli.UsageError('--out is required')
  log_plot.write_plot(workdirs, flag_values.out)
  print(f'Wrote {flag_values.out}')


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(work, define_flags, argv, doc=__doc__)


if __name__ == '__main__':
  cli.main_exit(work, define_flags, __doc__)
