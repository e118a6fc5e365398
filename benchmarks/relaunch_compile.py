"""Compile time of a first start and of a relaunch that finds the persistent compilation cache.

    python3 -m benchmarks.relaunch_compile --config configs/smoke.py [--steps 4] [--rounds 1]

Each round trains `--steps` steps of `python -m lgdlm_jax.main` twice, each time in a fresh process
and a fresh workdir, both pointed at one new cache directory (training.compilation_cache_dir): the
first start compiles every program (train step per cycle term set, evaluation, samplers) and fills
the cache, the second finds them there. Each start reports JAX's own compile events, summed:
`backend_compile_s` (XLA compiling), `cache_retrieval_s` (reading entries back), `trace_lower_s`
(tracing and lowering to StableHLO, which the cache does not save), and the start's wall time.
Prints one JSON line per start and one summary line per round with `relaunch_compile_share`, the
second start's (backend compile + retrieval) over the first start's backend compile.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# jax.monitoring event names (jax/_src/dispatch.py, compiler.py, compilation_cache.py).
EVENTS = {
  '/jax/core/compile/backend_compile_duration': 'backend_compile_s',
  '/jax/compilation_cache/cache_retrieval_time_sec': 'cache_retrieval_s',
  '/jax/core/compile/jaxpr_trace_duration': 'trace_lower_s',
  '/jax/core/compile/jaxpr_to_mlir_module_duration': 'trace_lower_s',
}


def child(main_args: list[str]) -> None:
  """One start, in this process: run lgdlm_jax.main with the listener on, print the sums as JSON."""
  import jax  # pylint: disable=g-import-not-at-top  (the parent process never imports jax)

  from lgdlm_jax import main  # pylint: disable=g-import-not-at-top

  totals = dict.fromkeys(EVENTS.values(), 0.0)

  def listen(event: str, seconds: float, **_) -> None:
    if event in EVENTS:
      totals[EVENTS[event]] += seconds

  jax.monitoring.register_event_duration_secs_listener(listen)
  started = time.perf_counter()
  code = main.main(main_args)
  if code:
    raise SystemExit(code)
  print(json.dumps({**{k: round(v, 2) for k, v in totals.items()}, 'wall_s': round(time.perf_counter() - started, 2)}))


def start(config: str, steps: int, workdir: str, cache: str) -> dict:
  command = [
    sys.executable,
    '-m',
    'benchmarks.relaunch_compile',
    '--child',
    '--',
    f'--config={config}',
    f'--workdir={workdir}',
    f'--config.training.num_train_steps={steps}',
    f'--config.training.compilation_cache_dir={cache}',
  ]
  out = subprocess.run(
    command, cwd=REPO_ROOT, check=True, capture_output=True, text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}
  ).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/smoke.py')
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--rounds', type=int, default=1)
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args, rest = parser.parse_known_args()
  if args.child:
    child([a for a in rest if a != '--'])
    return
  for round_ in range(args.rounds):
    with tempfile.TemporaryDirectory() as tmp:
      cache = os.path.join(tmp, 'cache')
      first = start(args.config, args.steps, os.path.join(tmp, 'first'), cache)
      second = start(args.config, args.steps, os.path.join(tmp, 'second'), cache)
    for name, result in (('first', first), ('second', second)):
      print(json.dumps({'config': args.config, 'round': round_, 'start': name, **result}))
    share = (second['backend_compile_s'] + second['cache_retrieval_s']) / max(first['backend_compile_s'], 1e-9)
    print(json.dumps({'config': args.config, 'round': round_, 'relaunch_compile_share': round(share, 3)}))


if __name__ == '__main__':
  main()
