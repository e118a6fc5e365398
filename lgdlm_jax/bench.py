"""Benchmark of the compiled cycle_vae train step: python -m lgdlm_jax.bench --config configs/smoke.py.

Prints one JSON line: config, backend, device, compile seconds, steps/s, tokens/s, model FLOPs per
step, MFU (on accelerators whose peak is known) and peak device memory. Timing starts after
`--warmup` steps and blocks on the result of the last step only, so dispatch overlaps as in training.
"""

import json
import time

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from lgdlm_jax import model as model_lib
from lgdlm_jax import optimizer as optimizer_lib
from lgdlm_jax import sharding
from lgdlm_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/smoke.py', 'Path to a get_config() Python file.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')

# Dense bf16 peak FLOP/s per chip, by jax device_kind prefix.
PEAK_FLOPS = {
    'NVIDIA H100': 989e12, 'NVIDIA H200': 989e12, 'NVIDIA A100': 312e12,
    'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v6 lite': 918e12,
}
ATTN_INNER = 512  # 8 heads x 64, fixed by the reference's MMDiT


def forward_flops_per_sequence(model_config: ml_collections.ConfigDict) -> float:
  """Matmul FLOPs of one forward pass over one sequence of S text tokens and one latent token."""
  h, s, v = model_config.hidden_size, model_config.max_seq_len, model_config.vocab_size
  n = s + 1
  per_token_block = 2 * h * 3 * ATTN_INNER + 2 * ATTN_INNER * h + 2 * 2 * h * 4 * h  # qkv, out, MLP
  attention = 2 * 2 * n * n * ATTN_INNER  # scores and weighted values
  heads = 2 * h * v * s * (2 if model_config.cluster_size > 0 else 1)
  latent = 2 * (model_config.latent_dim * 2 * h + 2 * h * h) * 2  # encoder + head
  return model_config.n_blocks * (n * per_token_block + attention) + heads + latent


def train_flops_per_step(config: ml_collections.ConfigDict) -> float:
  """Forward + backward (3x forward) of every pass the objective runs for one global batch."""
  passes = 4 if config.loss.cycle_latent_weight > 0 else 3
  return 3 * passes * config.training.train_batch_size * forward_flops_per_sequence(config.model)


def peak_flops(device: jax.Device) -> float | None:
  return next((v for k, v in PEAK_FLOPS.items() if device.device_kind.startswith(k)), None)


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """A seeded global batch of random tokens (no padding) and latents, as host arrays."""
  b, s = config.training.train_batch_size, config.model.max_seq_len
  rng = np.random.default_rng(seed)
  return {
      'input_ids': rng.integers(0, config.model.vocab_size, (b, s)).astype(np.int32),
      'attention_mask': np.ones((b, s), bool),
      'latent': rng.standard_normal((b, config.model.latent_dim)).astype(np.float32),
  }


def benchmark(config: ml_collections.ConfigDict, steps: int, warmup: int,
              host_batch: dict[str, np.ndarray] | None = None) -> dict:
  """Times the compiled train step on `host_batch` (default: synthetic_batch(config))."""
  model = model_lib.MultimodalMMDiT(config.model)
  optimizer = optimizer_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config)
  state, shardings = train.create_sharded_state(config, model, optimizer, mesh, jax.random.key(0))
  step_fn, *_ = train.compile_steps(config, model, optimizer, mesh, shardings)
  b, s = config.training.train_batch_size, config.model.max_seq_len
  batch = sharding.global_batch(synthetic_batch(config) if host_batch is None else host_batch, mesh)
  key = jax.random.key(1)

  started = time.perf_counter()
  compiled = step_fn.lower(state, batch, key).compile()
  compile_seconds = time.perf_counter() - started
  for _ in range(warmup):
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - started

  device = jax.devices()[0]
  steps_per_sec = steps / elapsed
  flops = train_flops_per_step(config)
  peak = peak_flops(device)
  memory = device.memory_stats() or {}
  return {
      'model': {k: config.model[k] for k in ('hidden_size', 'n_blocks', 'cond_dim', 'max_seq_len', 'vocab_size',
                                             'latent_dim', 'num_residual_streams', 'dtype', 'remat_policy')},
      'batch': b, 'cycle_latent_on': bool(config.loss.cycle_latent_weight > 0),
      'backend': jax.default_backend(), 'device': device.device_kind, 'devices': jax.device_count(),
      'compile_s': round(compile_seconds, 2), 'steps_per_s': steps_per_sec,
      'tokens_per_s': steps_per_sec * b * s, 'model_flops_per_step': flops,
      'mfu': None if peak is None else flops * steps_per_sec / (peak * jax.device_count()),
      'peak_memory_bytes': memory.get('peak_bytes_in_use'),
      'final_loss': float(metrics['loss']), 'jax': jax.__version__,
  }


def main(argv) -> None:
  del argv
  print(json.dumps(benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value)))


if __name__ == '__main__':
  app.run(main)
