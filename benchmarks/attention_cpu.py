"""Forward + backward seconds of one joint attention layer, xla against blockwise, on this machine.

    python3 -m benchmarks.attention_cpu --lengths 128,256,512,1024,2048 --batch 8

Prints one JSON line per (backend, length): the median of --repeats timed calls after one warm-up,
and the compiled step's temporary bytes. The text has `length` tokens, then the latent token; no
padding. This is the measurement behind the CPU rule of model.attention='auto'
(lgdlm_jax.model.attention.CPU_BLOCKWISE_FROM).
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lgdlm_jax.model import attention


def measure(backend: str, length: int, batch: int, repeats: int, block_size: int) -> dict:
  rng = np.random.default_rng(0)
  draw = lambda n: jnp.asarray(rng.standard_normal((batch, n, 8, 64)), jnp.float32)
  qs, ks, vs = ((draw(length), draw(1)) for _ in range(3))
  options = attention.AttentionOptions(backend, jnp.float32, blockwise_block_size=block_size)

  def loss(qs, ks, vs):
    return sum(jnp.sum(o) for o in attention.joint_attention(qs, ks, vs, (None, None), options))

  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  compiled = step.lower(qs, ks, vs).compile()
  jax.block_until_ready(compiled(qs, ks, vs))
  seconds = []
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(compiled(qs, ks, vs))
    seconds.append(time.perf_counter() - started)
  return {
    'backend': backend,
    'length': length,
    'batch': batch,
    'block_size': block_size,
    'median_s': round(statistics.median(seconds), 4),
    'temp_bytes': compiled.memory_analysis().temp_size_in_bytes,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--lengths', default='128,256,512,1024,2048')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--block_size', type=int, default=512)
  args = parser.parse_args()
  for length in map(int, args.lengths.split(',')):
    for backend in ('xla', 'blockwise'):
      print(json.dumps(measure(backend, length, args.batch, args.repeats, args.block_size)), flush=True)


if __name__ == '__main__':
  main()
