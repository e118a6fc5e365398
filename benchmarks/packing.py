"""Packed rows against padded rows: non-padding text tokens trained per second, CPU.

    python3 -m benchmarks.packing [--rounds 3] [--steps 3] [--seq_lens 128,512]

Model: configs/smoke.py, the reference's smoke YAML sizes (H 256, 2 blocks, C 256, D 32, V 8192,
R 2, float32), 4 rows per step, at each S of --seq_lens. Three sides, each timed in a fresh process
of its own, never two at once, alternating torch, jax padded, jax packed for --rounds rounds (as
benchmarks.cpu_vs_torch does, so that background load on a shared machine falls on all three):
  torch       the PyTorch reference's train step (lgdlm_jax.reference.trainer), padded rows;
  jax_padded  lgdlm_jax's train step (lgdlm_jax.bench.benchmark), padded rows, the reference's layout;
  jax_packed  the same with data.packing (K = data.max_segments_per_row samples per row, chosen
              below), loss.text_positions='valid' and model.length_head (the packed rows' loss).
A step costs the same whatever its tokens (every side computes every position of every row), so
each side is timed on one batch, median step time of all rounds, and its non-padding tokens per
step are the mean over --count_batches batches that lgdlm_jax's data pipeline (and its packer)
makes of each length distribution:
  demo  the token lengths of the 2,500 shipped sentences of data/kjv_demo (their attention masks,
        [CLS] and [SEP] included; mean 19 tokens);
  owt   sentences of 20-500 characters, as the reference's preprocessing cuts OpenWebText:
        characters log-normal with median OWT_MEDIAN_CHARS and log-space sigma OWT_SIGMA (assumed
        for English web sentences, not fitted here: the reference's corpus statistics are not on
        this machine), truncated to [20, 500], at CHARS_PER_TOKEN characters per token (GPT-2 BPE on
        English text) plus the two special tokens: 7 to 127 tokens.
K: the smallest of K_CANDIDATES whose packed padding at S is within 1 point of the largest one's.
Prints one JSON line per side and round, then one summary line per S: non-padding tokens/s and
padding fraction of each side per distribution, and packed over the reference and over jax padded.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

import ml_collections
import numpy as np
import torch

from benchmarks import cpu_vs_torch
from lgdlm_jax import bench
from lgdlm_jax import config as config_lib
from lgdlm_jax import data as data_lib
from lgdlm_jax.reference import trainer as reference_trainer
from lgdlm_jax.training import throughput

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEMO_TOKENS = REPO_ROOT / 'data' / 'kjv_demo' / 'tokens' / 'train'
SIDES = ('torch', 'jax_padded', 'jax_packed')
BATCH = 4
NUM_SAMPLES = 2048
OWT_MEDIAN_CHARS, OWT_SIGMA, OWT_CHAR_RANGE = 100.0, 0.55, (20, 500)
CHARS_PER_TOKEN, SPECIAL_TOKENS = 4.0, 2
K_CANDIDATES = (8, 16, 32, 64)


def demo_lengths() -> np.ndarray:
  return np.array([int(np.load(p)['attention_mask'].sum()) for p in sorted(DEMO_TOKENS.glob('*.npz'))])


def owt_lengths(n: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  chars = np.exp(rng.normal(np.log(OWT_MEDIAN_CHARS), OWT_SIGMA, 4 * n))
  chars = chars[(chars >= OWT_CHAR_RANGE[0]) & (chars <= OWT_CHAR_RANGE[1])][:n]
  return np.ceil(chars / CHARS_PER_TOKEN).astype(int) + SPECIAL_TOKENS


def write_dataset(root: str, lengths: np.ndarray, vocab: int, latent_dim: int) -> None:
  """Per-sample files in the reference's layout, each sample exactly its length (no padding stored)."""
  token_dir, latent_dir = os.path.join(root, 'tokens'), os.path.join(root, 'latents')
  os.makedirs(token_dir)
  os.makedirs(latent_dir)
  rng = np.random.default_rng(0)
  for i, length in enumerate(lengths):
    ids = rng.integers(5, vocab, length).astype(np.int32)
    np.savez(os.path.join(token_dir, f'{i:06d}_tokens.npz'), input_ids=ids, attention_mask=np.ones(length, np.uint8))
    np.save(os.path.join(latent_dir, f'{i:06d}.npy'), rng.standard_normal(latent_dim).astype(np.float32))


def make_config(seq_len: int, side: str, data_root: str = '', k: int = 8) -> ml_collections.ConfigDict:
  config = config_lib.default_config()  # configs/smoke.py is the default config
  config.model.max_seq_len = seq_len
  config.training.update(train_batch_size=BATCH, eval_batch_size=BATCH)
  config.data.update(prefetch_batches=0, num_workers=0)
  if data_root:
    config.data.update(token_dir=os.path.join(data_root, 'tokens'), latent_dir=os.path.join(data_root, 'latents'))
  if side == 'jax_packed':
    config.data.update(packing=True, max_segments_per_row=k)
    config.loss.text_positions = 'valid'
    config.model.length_head = True  # what a packed run trains: each segment's length, from its latent token
  return config


def batches(config: ml_collections.ConfigDict, count: int) -> list[dict[str, np.ndarray]]:
  """The first `count` training batches lgdlm_jax's data pipeline makes for `config`."""
  train_iter, _ = data_lib.make_datasets(config_lib.finalize(config), process_index=0, process_count=1)
  try:
    return [next(train_iter) for _ in range(count)]
  finally:
    train_iter.close()


def padding_fraction(config: ml_collections.ConfigDict, count: int) -> float:
  counted = [throughput.count_tokens(b) for b in batches(config, count)]
  return 1.0 - sum(t.real for t in counted) / sum(t.total for t in counted)


def choose_k(seq_len: int, data_root: str, count: int) -> tuple[int, dict[int, float]]:
  padding = {k: padding_fraction(make_config(seq_len, 'jax_packed', data_root, k), count) for k in K_CANDIDATES}
  best = min(padding.values())
  return next(k for k in K_CANDIDATES if padding[k] <= best + 0.01), padding


def time_side(side: str, seq_len: int, data_root: str, k: int, steps: int, warmup: int) -> list[float]:
  """Seconds of each timed step of `side` (in this process) on the first batch of the data at data_root."""
  config = make_config(seq_len, side, data_root, k)
  (host_batch,) = batches(config, 1)
  if side == 'torch':
    torch.set_num_threads(cpu_vs_torch.TORCH_THREADS)
    trainer = reference_trainer.TorchTrainer(config, host_batch)
    for _ in range(warmup):
      trainer.train_step()
    trainer.timed(steps)
    return trainer.step_seconds
  return bench.benchmark(config, steps, warmup, host_batch, sync_each_step=True)['step_seconds']


def run_rounds(args, data_roots: dict[str, str], ks: dict[int, int]) -> dict[tuple[str, int], list[float]]:
  step_seconds: dict[tuple[str, int], list[float]] = {}
  env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': os.path.join(args.workdir, 'jax_cache')}
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'  # later rounds load the first round's programs
  for round_ in range(args.rounds):
    for side in args.sides:
      for seq_len in args.seq_lens:
        command = [sys.executable, '-m', 'benchmarks.packing', '--side', side, '--seq_lens', str(seq_len)]
        command += ['--data_root', data_roots['owt'], '--k', str(ks[seq_len])]
        command += ['--steps', str(args.steps), '--warmup', str(args.warmup)]
        child = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
        if child.returncode != 0:
          raise RuntimeError(f'{side} at S={seq_len} failed (exit {child.returncode}):\n{child.stderr[-4000:]}')
        seconds = json.loads(child.stdout.strip().splitlines()[-1])['step_seconds']
        step_seconds.setdefault((side, seq_len), []).extend(seconds)
        print(json.dumps({'round': round_, 'side': side, 'seq_len': seq_len, 'step_seconds': seconds}), flush=True)
  return step_seconds


def summary(seq_len: int, k: int, padding: dict[str, dict[str, float]], seconds: list[float], sides) -> dict:
  """Non-padding tokens/s of each side and distribution from its median step and its padding."""
  median = {side: statistics.median(seconds[side]) for side in sides}
  real = {
    name: {side: BATCH * seq_len * (1 - padding[name][side]) / median[side] for side in sides} for name in padding
  }
  ratios = {}
  for over, under in (('jax_packed', 'torch'), ('jax_packed', 'jax_padded'), ('jax_padded', 'torch')):
    if over in sides and under in sides:
      ratios[f'{over}_over_{under}'] = {name: real[name][over] / real[name][under] for name in padding}
  return {
    'seq_len': seq_len,
    'max_segments_per_row': k,
    'batch': BATCH,
    'median_step_s': median,
    'steps_per_side': {side: len(seconds[side]) for side in sides},
    'padding_fraction': padding,
    'real_tokens_per_s': real,
    **ratios,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rounds', type=int, default=3, help='alternations of the three sides, each in fresh processes')
  parser.add_argument('--steps', type=int, default=2, help='timed steps per side and round')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps per side and round before timing')
  parser.add_argument('--seq_lens', default='128,512', help='comma-separated S values')
  parser.add_argument('--count_batches', type=int, default=64, help='batches whose padding is counted')
  parser.add_argument('--workdir', default='', help='where the datasets and compile cache go (default: a temp dir)')
  parser.add_argument('--sides', default=','.join(SIDES), help=f'comma-separated sides, of {", ".join(SIDES)}')
  parser.add_argument('--side', choices=SIDES, help='time this side in this process (the rounds run it)')
  parser.add_argument('--data_root', default='', help='with --side: the dataset to take the batch from')
  parser.add_argument('--k', type=int, default=8, help='with --side: data.max_segments_per_row')
  args = parser.parse_args()
  args.seq_lens = [int(s) for s in args.seq_lens.split(',')]
  args.sides = [s for s in SIDES if s in args.sides.split(',')]
  if args.side:
    seconds = time_side(args.side, args.seq_lens[0], args.data_root, args.k, args.steps, args.warmup)
    print(json.dumps({'step_seconds': [round(s, 4) for s in seconds]}))
    return

  with tempfile.TemporaryDirectory() as temp:
    args.workdir = args.workdir or temp
    smoke = config_lib.default_config().model
    lengths = {'demo': demo_lengths(), 'owt': owt_lengths(NUM_SAMPLES)}
    data_roots = {}
    for name, values in lengths.items():
      data_roots[name] = os.path.join(args.workdir, name)
      write_dataset(data_roots[name], values, smoke.vocab_size, smoke.latent_dim)
      print(
        json.dumps(
          {
            'lengths': name,
            'samples': len(values),
            'mean_tokens': round(float(values.mean()), 2),
            'percentiles_5_50_95': np.percentile(values, [5, 50, 95]).tolist(),
            'max': int(values.max()),
          }
        ),
        flush=True,
      )
    ks, padding = {}, {}
    for seq_len in args.seq_lens:
      ks[seq_len] = 8
      if 'jax_packed' in args.sides:
        ks[seq_len], by_k = choose_k(seq_len, data_roots['owt'], args.count_batches)
        print(json.dumps({'seq_len': seq_len, 'owt_packed_padding_by_k': by_k, 'chosen_k': ks[seq_len]}), flush=True)
      padding[seq_len] = {}
      for name, root in data_roots.items():
        layouts = ['jax_padded'] + (['jax_packed'] if 'jax_packed' in args.sides else [])
        found = {
          side: padding_fraction(make_config(seq_len, side, root, ks[seq_len]), args.count_batches) for side in layouts
        }
        found['torch'] = found['jax_padded']  # the same padded rows
        padding[seq_len][name] = found
    step_seconds = run_rounds(args, data_roots, ks)
    for seq_len in args.seq_lens:
      seconds = {side: step_seconds[(side, seq_len)] for side in args.sides}
      print(json.dumps(summary(seq_len, ks[seq_len], padding[seq_len], seconds, args.sides)), flush=True)


if __name__ == '__main__':
  main()
