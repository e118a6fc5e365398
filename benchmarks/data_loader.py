"""Loader speed: per-sample files vs packed shards, one process, warm and cold page cache.

    python3 -m benchmarks.data_loader --samples 100000 --seq_len 256
    python3 -m benchmarks.data_loader --samples 20000 --seq_len 4096 --batch 64
    python3 -m benchmarks.data_loader --training_log runs/demo    # the loader's share of a training run

Writes a synthetic dataset of --samples reference-layout file pairs (uncompressed .npz tokens with
padded tails, float32 .npy latents) under --root (default /tmp), packs it, then for each layout
and page-cache state runs a fresh process that builds the training pipeline
(lgdlm_jax.data.make_datasets) and reads batches for about --seconds. It prints one JSON line per
run: start-up seconds (make_datasets to the first batch, imports excluded), samples/s after the
first batch. "Cold" evicts the dataset's files from the page cache first (posix_fadvise
DONTNEED, which needs no privileges); "warm" reads everything once before. The dataset is deleted
at the end unless --keep.

--training_log WORKDIR instead reads a training run's training_log.jsonl and prints the mean
time a step waited for its batch (`data_wait_time`, measured by the training loop around
`next(train_iter)`) against the mean step time, leaving out the first two steps (compilation).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_files(root: str, num: int, seq_len: int, latent_dim: int, vocab: int) -> tuple[str, str]:
  token_dir, latent_dir = os.path.join(root, 'tokens', 'train'), os.path.join(root, 'latents', 'train')
  os.makedirs(token_dir, exist_ok=True)
  os.makedirs(latent_dir, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(num):
    length = int(rng.integers(seq_len // 4, seq_len + 1))
    ids = np.zeros(seq_len, np.int32)
    ids[:length] = rng.integers(5, vocab, length)
    np.savez(
      os.path.join(token_dir, f'{i:07d}_tokens.npz'),
      input_ids=ids,
      attention_mask=(np.arange(seq_len) < length).astype(np.uint8),
    )
    np.save(os.path.join(latent_dir, f'{i:07d}.npy'), rng.standard_normal(latent_dim).astype(np.float32))
  with open(os.path.join(root, 'dataset.json'), 'w') as f:
    json.dump({'vocab_size': vocab, 'latent_dim': latent_dim, 'seq_len': seq_len}, f)
  return token_dir, latent_dir


def _files_under(root: str):
  for directory, _, names in os.walk(root):
    for name in names:
      yield os.path.join(directory, name)


def set_cache(root: str, warm: bool) -> None:
  for path in _files_under(root):
    fd = os.open(path, os.O_RDONLY)
    try:
      if warm:
        while os.read(fd, 1 << 22):
          pass
      else:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def measure(data_dir: str, seq_len: int, latent_dim: int, vocab: int, batch: int, workers: int, seconds: float) -> dict:
  """In a fresh process: start-up and samples/s of the training pipeline on data_dir."""
  from lgdlm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from lgdlm_jax import data  # pylint: disable=g-import-not-at-top

  config = config_lib.default_config()
  config.model.update(vocab_size=vocab, max_seq_len=seq_len, latent_dim=latent_dim)
  config.tokenizer.update(vocab_size=vocab)
  config.data.update(data_dir=data_dir, val_ratio=0.0, num_workers=workers, prefetch_batches=4)
  config.training.update(train_batch_size=batch)
  config = config_lib.finalize(config)
  started = time.perf_counter()
  train, _ = data.make_datasets(config, process_index=0, process_count=1)
  next(train)
  startup = time.perf_counter() - started
  steps, started = 0, time.perf_counter()
  while time.perf_counter() - started < seconds and steps < train.steps_per_epoch - 1:
    next(train)
    steps += 1
  elapsed = time.perf_counter() - started
  train.close()
  return {'startup_s': round(startup, 3), 'samples_per_s': round(steps * batch / elapsed, 1), 'batches': steps}


def loader_share(workdir: str) -> dict:
  from lgdlm_jax.training import metrics_log  # pylint: disable=g-import-not-at-top

  records = [r for r in metrics_log.read_log(workdir) if 'data_wait_time' in r and r['step'] > 2]
  wait = float(np.mean([r['data_wait_time'] for r in records]))
  step = float(np.mean([r['step_time'] for r in records]))
  return {
    'workdir': workdir,
    'logged_steps': len(records),
    'mean_step_time_s': round(step, 5),
    'mean_data_wait_s': round(wait, 6),
    'data_wait_share': round(wait / step, 4),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--samples', type=int, default=100_000)
  parser.add_argument('--seq_len', type=int, default=256)
  parser.add_argument('--latent_dim', type=int, default=32)
  parser.add_argument('--vocab', type=int, default=8192)
  parser.add_argument('--batch', type=int, default=256, help='global batch (one process: all of it)')
  parser.add_argument('--workers', type=int, nargs='+', default=[0, 2], help='data.num_workers values to run')
  parser.add_argument('--seconds', type=float, default=15.0, help='reading time per run')
  parser.add_argument('--root', default='/tmp')
  parser.add_argument('--keep', action='store_true')
  parser.add_argument('--training_log', help='a training workdir: report its data-wait share and stop')
  parser.add_argument('--measure', nargs=3, metavar=('DATA_DIR', 'WORKERS', 'LAYOUT'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.training_log:
    print(json.dumps(loader_share(args.training_log)))
    return
  if args.measure:
    data_dir, workers, _ = args.measure
    print(
      json.dumps(measure(data_dir, args.seq_len, args.latent_dim, args.vocab, args.batch, int(workers), args.seconds))
    )
    return

  from lgdlm_jax.data import packed_writer  # pylint: disable=g-import-not-at-top

  root = os.path.join(args.root, f'lgdlm_loader_bench_{args.samples}_{args.seq_len}')
  files_dir, packed_dir = os.path.join(root, 'files'), os.path.join(root, 'packed')
  try:
    if not os.path.isdir(files_dir):
      started = time.perf_counter()
      write_files(files_dir, args.samples, args.seq_len, args.latent_dim, args.vocab)
      print(f'wrote {args.samples} file pairs in {time.perf_counter() - started:.0f} s', file=sys.stderr)
    if not os.path.isdir(packed_dir):
      started = time.perf_counter()
      packed_writer.pack(
        *(os.path.join(files_dir, kind, 'train') for kind in ('tokens', 'latents')), packed_dir, info_dir=files_dir
      )
      print(f'packed in {time.perf_counter() - started:.0f} s', file=sys.stderr)
    for cache in ('warm', 'cold'):
      for layout, data_dir in (('files', files_dir), ('packed', packed_dir)):
        for workers in args.workers:
          set_cache(data_dir, warm=cache == 'warm')
          child = [sys.executable, '-m', 'benchmarks.data_loader', '--measure', data_dir, str(workers), layout]
          child += [f'--{k}={getattr(args, k)}' for k in ('seq_len', 'latent_dim', 'vocab', 'batch', 'seconds')]
          out = subprocess.run(child, check=True, capture_output=True, text=True, cwd=REPO).stdout
          result = json.loads(out.strip().splitlines()[-1])
          print(
            json.dumps(
              {
                'layout': layout,
                'page_cache': cache,
                'num_workers': workers,
                'samples': args.samples,
                'seq_len': args.seq_len,
                'batch': args.batch,
                **result,
              }
            ),
            flush=True,
          )
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  main()
