"""CPU benchmark: our compiled cycle_vae train step against the PyTorch reference.

    python benchmarks/cpu_vs_torch.py [--steps N] [--warmup W] [--rounds R]

Config (the performance issue's): hidden 512, 4 blocks, cond 512, sequence 256, batch 8, vocab 8192,
latent 32, R = 2, float32, all four loss terms on (cycle_latent_weight = 1.0); our side unrolls
the 4 blocks (model.scan_unroll = 4). Both sides train on the same host batch with the same
AdamW settings and gradient clipping.

PyTorch side: lgdlm_jax.convert.twin's model (glue around the real pinned `mmdit` backbone),
tests/torch_cycle_loss.py's statement of the reference loss (four separate model calls), then
loss.backward(), clip_grad_norm_ and torch.optim.AdamW.step(), with torch.set_num_threads(2).

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
import time

# Run as a script from anywhere: the repository root holds lgdlm_jax and tests.
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lgdlm_jax import bench  # noqa: E402
from lgdlm_jax import config as config_lib  # noqa: E402
from lgdlm_jax import diffusion  # noqa: E402
from lgdlm_jax.convert import twin  # noqa: E402
from tests import torch_cycle_loss  # noqa: E402

TORCH_THREADS = 2


def make_config() -> ml_collections.ConfigDict:
  config = config_lib.default_config()
  config.model.update(hidden_size=512, n_blocks=4, cond_dim=512, max_seq_len=256, vocab_size=8192, latent_dim=32,
                      num_residual_streams=2, dtype='float32', scan_unroll=4)
  config.training.train_batch_size = 8
  config.loss.cycle_latent_weight = 1.0  # all four terms on
  return config


class TorchTrainer:
  """The reference train step: cycle loss over four model calls, backward, clip, AdamW."""

  def __init__(self, config: ml_collections.ConfigDict, host_batch: dict[str, np.ndarray]):
    torch.manual_seed(0)
    self.config = config
    self.model = twin.ReferenceMultimodalMMDiT(config.model).train()
    opt = config.optimizer
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2),
                                       eps=opt.eps, weight_decay=opt.weight_decay)
    schedule = diffusion.make_schedule(config.model.latent_beta_schedule, config.model.latent_timesteps)
    self.tables = (torch.tensor(np.asarray(schedule.sqrt_alphas_cumprod)),
                   torch.tensor(np.asarray(schedule.sqrt_one_minus_alphas_cumprod)))
    self.batch = dict(input_ids=torch.from_numpy(host_batch['input_ids']).long(),
                      attention_mask=torch.from_numpy(host_batch['attention_mask']),
                      latent=torch.from_numpy(host_batch['latent']))
    self.generator = torch.Generator().manual_seed(1)
    self.step = 0
    self.loss = float('nan')
    self.step_seconds: list[float] = []  # of timed steps: background load on a shared machine shows up here

  def _draws(self) -> dict[str, torch.Tensor]:
    # The random latent_t_mode: U(t_min, t_max) clamped to <= 0.9999, as lgdlm_jax.losses draws it.
    loss_cfg, (b, d) = self.config.loss, self.batch['latent'].shape
    uniform = lambda: (loss_cfg.cycle_latent_t_min + (loss_cfg.cycle_latent_t_max - loss_cfg.cycle_latent_t_min)
                       * torch.rand(b, generator=self.generator)).clamp(max=0.9999)
    return dict(t_lat=uniform(), noise=torch.randn(b, d, generator=self.generator),
                t_lat2=uniform(), noise2=torch.randn(b, d, generator=self.generator))

  def train_step(self) -> None:
    cfg = self.config
    self.optimizer.zero_grad(set_to_none=True)
    total, _ = torch_cycle_loss.cycle_vae_loss(self.model, self.batch, self._draws(), self.step, cfg.loss,
                                               cfg.tokenizer.mask_token_id, cfg.model.latent_parameterization,
                                               self.tables)
    total.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.grad_clip_norm)
    self.optimizer.step()
    self.step += 1
    self.loss = float(total.detach())

  def timed(self, steps: int) -> None:
    """Runs `steps` train steps, appending each one's seconds (steps are synchronous on CPU)."""
    for _ in range(steps):
      started = time.perf_counter()
      self.train_step()
      self.step_seconds.append(time.perf_counter() - started)


def run_side(side: str, steps: int, warmup: int) -> dict:
  """Times one side in this process; returns its JSON record."""
  config = make_config()
  host_batch = bench.synthetic_batch(config)
  b, s = config.training.train_batch_size, config.model.max_seq_len
  if side == 'torch':
    torch.set_num_threads(TORCH_THREADS)
    trainer = TorchTrainer(config, host_batch)
    for _ in range(warmup):
      trainer.train_step()
    trainer.timed(steps)
    record = {'torch': torch.__version__, 'threads': torch.get_num_threads(), 'final_loss': trainer.loss,
              'step_seconds': [round(t, 3) for t in trainer.step_seconds]}
  else:
    record = bench.benchmark(config, steps, warmup, host_batch, sync_each_step=True)
    record['xla_flags'] = os.environ.get('XLA_FLAGS', '')
  median = statistics.median(record['step_seconds'])
  return {'side': side, **record, 'median_step_s': median, 'steps_per_s': 1.0 / median,
          'tokens_per_s': b * s / median, 'loadavg': os.getloadavg()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=4, help='timed steps per side and round')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps per side and round before timing')
  parser.add_argument('--rounds', type=int, default=2, help='torch, jax alternations, each in fresh processes')
  parser.add_argument('--side', choices=('both', 'torch', 'jax'), default='both',
                      help='both: run the alternation; torch / jax: time that side in this process')
  args = parser.parse_args()
  if args.side != 'both':
    print(json.dumps(run_side(args.side, args.steps, args.warmup)))
    return

  step_seconds: dict[str, list[float]] = {'torch': [], 'jax': []}
  for _ in range(args.rounds):
    for side in ('torch', 'jax'):
      command = [sys.executable, __file__, '--side', side, '--steps', str(args.steps), '--warmup', str(args.warmup)]
      child = subprocess.run(command, capture_output=True, text=True)
      if child.returncode != 0:
        raise RuntimeError(f'the {side} side failed (exit {child.returncode}):\n{child.stderr}')
      record = json.loads(child.stdout.strip().splitlines()[-1])
      print(json.dumps(record), flush=True)
      step_seconds[side] += record['step_seconds']
  medians = {side: statistics.median(times) for side, times in step_seconds.items()}
  print(json.dumps({'ratio_jax_over_torch': medians['torch'] / medians['jax'], 'median_step_s': medians,
                    'steps_per_side': len(step_seconds['jax']), 'cpu_count': os.cpu_count()}))


if __name__ == '__main__':
  main()
