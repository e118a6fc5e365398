"""CPU benchmark: our compiled cycle_vae train step against the PyTorch reference, in one process.

    python benchmarks/cpu_vs_torch.py [--steps N] [--warmup W]

Config (the performance issue's): hidden 512, 4 blocks, cond 512, sequence 256, batch 8, vocab 8192,
latent 32, R = 2, float32, all four loss terms on (cycle_latent_weight = 1.0). Both sides train on
the same host batch with the same AdamW settings and gradient clipping.

PyTorch side: lgdlm_jax.torch_interop.twin's model (glue around the real pinned `mmdit` backbone),
tests/torch_cycle_loss.py's statement of the reference loss (four separate model calls), then
loss.backward(), clip_grad_norm_ and torch.optim.AdamW.step(), with torch.set_num_threads(2).

Cores: JAX and PyTorch never run at the same time. The order is torch (first half of its timed
steps), JAX (compile, warm-up, timed steps), torch (second half); whichever side is idle is blocked,
not busy, while the other one is timed (both thread pools spin only briefly before they sleep).
Splitting the torch steps around the JAX run spreads any background load over both sides. Each side gets both cores:
XLA's CPU client sizes its pool to the machine, torch is told set_num_threads(2).

Read the torch `step_seconds` before trusting the ratio: on a shared machine under background load,
torch's 2-thread OpenMP team has been seen to slow down ~10x on some steps (7 s -> 85-113 s per
step), while XLA's pool slowed ~2x; the ratio then measures contention, not the code.

Prints one JSON line per side and one with the ratio (JAX steps/s over torch steps/s).
"""

import argparse
import json
import os
import pathlib
import sys
import time

# Run as a script from anywhere: the repository root holds lgdlm_jax and tests.
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lgdlm_jax import bench  # noqa: E402
from lgdlm_jax import default_config  # noqa: E402
from lgdlm_jax import diffusion  # noqa: E402
from lgdlm_jax.torch_interop import twin  # noqa: E402
from tests import torch_cycle_loss  # noqa: E402

TORCH_THREADS = 2


def make_config() -> ml_collections.ConfigDict:
  config = default_config.default_config()
  config.model.update(hidden_size=512, n_blocks=4, cond_dim=512, max_seq_len=256, vocab_size=8192, latent_dim=32,
                      num_residual_streams=2, dtype='float32')
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

  def timed(self, steps: int) -> float:
    """Seconds for `steps` train steps (each step is synchronous on CPU)."""
    total = 0.0
    for _ in range(steps):
      started = time.perf_counter()
      self.train_step()
      self.step_seconds.append(time.perf_counter() - started)
      total += self.step_seconds[-1]
    return total


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=4, help='timed steps per side')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps per side before timing')
  args = parser.parse_args()

  torch.set_num_threads(TORCH_THREADS)
  config = make_config()
  host_batch = bench.synthetic_batch(config)
  b, s = config.training.train_batch_size, config.model.max_seq_len
  load_before = os.getloadavg()

  trainer = TorchTrainer(config, host_batch)
  for _ in range(args.warmup):
    trainer.train_step()
  first_half = args.steps // 2
  torch_seconds = trainer.timed(first_half)
  ours = bench.benchmark(config, args.steps, args.warmup, host_batch)
  torch_seconds += trainer.timed(args.steps - first_half)

  torch_steps_per_s = args.steps / torch_seconds
  theirs = {
      'side': 'torch', 'torch': torch.__version__, 'threads': torch.get_num_threads(),
      'steps_per_s': torch_steps_per_s, 'tokens_per_s': torch_steps_per_s * b * s, 'final_loss': trainer.loss,
      'step_seconds': [round(t, 2) for t in trainer.step_seconds],
  }
  print(json.dumps({'side': 'jax', 'xla_flags': os.environ.get('XLA_FLAGS', ''), **ours}))
  print(json.dumps(theirs))
  print(json.dumps({'ratio_jax_over_torch': ours['steps_per_s'] / torch_steps_per_s, 'steps': args.steps,
                    'cpu_count': os.cpu_count(), 'loadavg_before': load_before, 'loadavg_after': os.getloadavg()}))


if __name__ == '__main__':
  main()
