"""CPU benchmark: our compiled cycle_vae train step against the PyTorch reference.

    python3 -m benchmarks.cpu_vs_torch [--steps N] [--warmup W] [--rounds R]

Config (the performance issue's): hidden 512, 4 blocks, cond 512, sequence 256, batch 8, vocab 8192,
latent 32, R = 2, float32, all four loss terms on (cycle_latent_weight = 1.0); everything else at
lgdlm_jax's defaults (model.scan_unroll auto: the 4 blocks unrolled on CPU). Both sides train on
the same host batch with the same AdamW settings and gradient clipping.

PyTorch side: lgdlm_jax.reference.trainer's train step (the twin model around the real pinned
`mmdit` backbone, the reference loss's four separate model calls, backward, clip_grad_norm_,
torch.optim.AdamW.step()) in float32, with torch.set_num_threads(2).

Each side runs in a fresh process of its own (`--side torch|jax`), never at the same time as the
other, and the sides alternate for --rounds rounds (torch, jax, torch, jax, ...) so that background
load on a shared machine falls on both. An earlier version timed both in one process: torch's
OpenMP team then slowed down ~10x after the JAX run (XLA's idle worker threads competing for the
two cores), which made its figures meaningless. Every step is timed on its own; the ratio is of
the MEDIAN step times (JAX steps/s over torch steps/s), which one slow outlier cannot move.

Prints one JSON line per side (all step times, median, steps/s) and one with the ratio.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

import ml_collections
import torch

from lgdlm_jax import bench
from lgdlm_jax import config as config_lib
from lgdlm_jax.reference import trainer as reference_trainer

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

TORCH_THREADS = 2


def make_config() -> ml_collections.ConfigDict:
  config = config_lib.default_config()
  config.model.update(
    hidden_size=512,
    n_blocks=4,
    cond_dim=512,
    max_seq_len=256,
    vocab_size=8192,
    latent_dim=32,
    num_residual_streams=2,
    dtype='float32',
  )
  config.training.train_batch_size = 8
  config.loss.cycle_latent_weight = 1.0  # all four terms on
  return config


def run_side(side: str, steps: int, warmup: int) -> dict:
  """Times one side in this process; returns its JSON record."""
  config = make_config()
  host_batch = bench.synthetic_batch(config)
  b, s = config.training.train_batch_size, config.model.max_seq_len
  if side == 'torch':
    torch.set_num_threads(TORCH_THREADS)
    trainer = reference_trainer.TorchTrainer(config, host_batch)
    for _ in range(warmup):
      trainer.train_step()
    trainer.timed(steps)
    record = {
      'torch': torch.__version__,
      'threads': torch.get_num_threads(),
      'final_loss': trainer.loss,
      'step_seconds': [round(t, 3) for t in trainer.step_seconds],
    }
  else:
    record = bench.benchmark(config, steps, warmup, host_batch, sync_each_step=True)
    record['xla_flags'] = os.environ.get('XLA_FLAGS', '')
  median = statistics.median(record['step_seconds'])
  return {
    'side': side,
    **record,
    'median_step_s': median,
    'steps_per_s': 1.0 / median,
    'tokens_per_s': b * s / median,
    'loadavg': os.getloadavg(),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=4, help='timed steps per side and round')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps per side and round before timing')
  parser.add_argument('--rounds', type=int, default=2, help='torch, jax alternations, each in fresh processes')
  parser.add_argument(
    '--side',
    choices=('both', 'torch', 'jax'),
    default='both',
    help='both: run the alternation; torch / jax: time that side in this process',
  )
  args = parser.parse_args()
  if args.side != 'both':
    print(json.dumps(run_side(args.side, args.steps, args.warmup)))
    return

  step_seconds: dict[str, list[float]] = {'torch': [], 'jax': []}
  for _ in range(args.rounds):
    for side in ('torch', 'jax'):
      command = [
        sys.executable,
        '-m',
        'benchmarks.cpu_vs_torch',
        '--side',
        side,
        '--steps',
        str(args.steps),
        '--warmup',
        str(args.warmup),
      ]
      child = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
      if child.returncode != 0:
        raise RuntimeError(f'the {side} side failed (exit {child.returncode}):\n{child.stderr}')
      record = json.loads(child.stdout.strip().splitlines()[-1])
      print(json.dumps(record), flush=True)
      step_seconds[side] += record['step_seconds']
  medians = {side: statistics.median(times) for side, times in step_seconds.items()}
  print(
    json.dumps(
      {
        'ratio_jax_over_torch': medians['torch'] / medians['jax'],
        'median_step_s': medians,
        'steps_per_side': len(step_seconds['jax']),
        'cpu_count': os.cpu_count(),
      }
    )
  )


if __name__ == '__main__':
  main()
