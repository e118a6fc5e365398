"""Step time and compile time of the train step per cycle schedule: all four terms, base only, cycle_every=4.

    python3 -m benchmarks.term_sets [--configs smoke demo] [--steps 20] [--warmup 4]

Runs `python -m lgdlm_jax.bench` once per (config, schedule), each in a fresh process, one after
the other, and prints one JSON line per run and then a Markdown table. With --steps 20 --warmup 4
the timed steps 4..23 hold exactly one cycle update in four under cycle_every=4. The compile time
is the sum over the train-step programs the timed and warm-up steps use (two under cycle_every=4).
"""

import argparse
import json
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Every schedule sets its own weights and cycle_every and drops the config's warmups and ramps, so
# that the timed steps run the terms named (the demo config warms its cycle terms up for 500 steps).
NO_WARMUP = [f'--config.loss.cycle_{term}_{what}_steps=0' for term in ('text', 'latent') for what in ('warmup', 'ramp')]
SCHEDULES = {
  'all four terms': [
    '--config.loss.cycle_text_weight=1.0',
    '--config.loss.cycle_latent_weight=1.0',
    '--config.loss.cycle_every=1',
    *NO_WARMUP,
  ],
  'base only': ['--config.loss.cycle_text_weight=0.0', '--config.loss.cycle_latent_weight=0.0', *NO_WARMUP],
  'cycle_every=4': [
    '--config.loss.cycle_text_weight=1.0',
    '--config.loss.cycle_latent_weight=1.0',
    '--config.loss.cycle_every=4',
    *NO_WARMUP,
  ],
}


def run_bench(config: str, flags: list[str], steps: int, warmup: int) -> dict:
  command = [
    sys.executable,
    '-m',
    'lgdlm_jax.bench',
    f'--config=configs/{config}.py',
    f'--steps={steps}',
    f'--warmup={warmup}',
    *flags,
  ]
  out = subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', nargs='+', default=['smoke', 'demo'])
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=4)
  args = parser.parse_args()
  rows = []
  for config in args.configs:
    for name, flags in SCHEDULES.items():
      result = run_bench(config, flags, args.steps, args.warmup)
      print(json.dumps({'config': config, 'schedule': name, **result}), flush=True)
      programs = ', '.join(f'{p} {s} s' for p, s in result['compile_s_by_program'].items())
      rows.append(
        f'| {config} | {name} | {1000 / result["steps_per_s"]:.0f} | {result["steps_per_s"]:.2f} | '
        f'{result["model_flops_per_step"] / 1e9:.2f} | {len(result["compile_s_by_program"])} | '
        f'{result["compile_s"]:.1f} ({programs}) |'
      )
  print('| config | schedule | ms/step | steps/s | model GFLOP/step | train-step programs | compile s |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  print('\n'.join(rows))


if __name__ == '__main__':
  main()
