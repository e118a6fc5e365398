"""Time and peak memory of the migration chain on a reference checkpoint with AdamW state.

  python3 -m benchmarks.convert_bench --hidden 1024 --blocks 12 --seq 4096 [--verify] [--workdir DIR]

Writes a cycle-trainer run directory the reference's way (random weights, AdamW state after one
update), then times, each in a fresh process under /usr/bin/time: the conversion into lgdlm_jax
(weights + moments), and the export back to the cycle trainer's layout. Prints one JSON line per
phase: wall seconds, peak resident memory (GiB) and the sizes involved. Needs the reference extra
(torch, mmdit) for the reference model.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_reference_run(run_dir: str, args: argparse.Namespace) -> int:
  import torch  # pylint: disable=g-import-not-at-top

  from lgdlm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from lgdlm_jax.reference import model as reference_model  # pylint: disable=g-import-not-at-top

  model_config = config_lib.default_config().model
  model_config.update(hidden_size=args.hidden, n_blocks=args.blocks, cond_dim=args.hidden, max_seq_len=args.seq)
  model = reference_model.ReferenceMultimodalMMDiT(model_config)
  trainer = torch.nn.Module()
  trainer.model = model  # the cycle trainer wraps the model: keys carry `model.`
  adamw = torch.optim.AdamW(trainer.parameters(), lr=1e-4)
  for p in trainer.parameters():
    p.grad = torch.randn_like(p)
  adamw.step()
  os.makedirs(os.path.join(run_dir, 'checkpoints'))
  torch.save(
    {
      'model_state_dict': trainer.state_dict(),
      'optimizer_state_dict': adamw.state_dict(),
      'step': 0,
      'cfg': {'model': {'dropout': 0.0}},
    },
    os.path.join(run_dir, 'checkpoints', 'latest.pt'),
  )
  return sum(p.numel() for p in trainer.parameters())


def timed(name: str, command: list[str], **fields) -> dict:
  result = subprocess.run(['/usr/bin/time', '-f', '%e %M', *command], cwd=REPO, capture_output=True, text=True)
  if result.returncode:
    raise SystemExit(f'{name} failed:\n{result.stdout}\n{result.stderr}')
  seconds, max_kib = result.stderr.strip().splitlines()[-1].split()
  record = {'phase': name, 'seconds': float(seconds), 'peak_rss_gib': round(int(max_kib) / 2**20, 2), **fields}
  print(json.dumps(record), flush=True)
  return record


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--hidden', type=int, default=512)
  parser.add_argument('--blocks', type=int, default=8)
  parser.add_argument('--seq', type=int, default=1024)
  parser.add_argument('--verify', action='store_true', help="also run the converter's --verify")
  parser.add_argument('--workdir', help='where the files go (default: a temporary directory)')
  parser.add_argument('--write_only', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix='convert_bench.')
  run_dir = os.path.join(workdir, 'reference_run')
  if args.write_only:
    print(write_reference_run(run_dir, args))
    return
  sizes = dict(hidden=args.hidden, blocks=args.blocks, seq=args.seq)
  argv = [f'--hidden={args.hidden}', f'--blocks={args.blocks}', f'--seq={args.seq}', f'--workdir={workdir}']
  written = subprocess.run(
    [sys.executable, '-m', 'benchmarks.convert_bench', '--write_only', *argv],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO,
  )
  parameters = int(written.stdout.strip().splitlines()[-1])
  checkpoint_bytes = os.path.getsize(os.path.join(run_dir, 'checkpoints', 'latest.pt'))
  sizes.update(parameters=parameters, checkpoint_gib=round(checkpoint_bytes / 2**30, 2))
  convert = [
    sys.executable,
    '-m',
    'lgdlm_jax.convert',
    '--input',
    run_dir,
    '--output',
    os.path.join(workdir, 'converted'),
  ]
  timed(
    'to lgdlm_jax (weights + AdamW moments)' + (' with --verify' if args.verify else ''),
    convert + (['--verify'] if args.verify else []),
    **sizes,
  )
  timed(
    "to the cycle trainer's layout",
    [
      sys.executable,
      '-m',
      'lgdlm_jax.convert',
      '--to-torch',
      '--input',
      os.path.join(workdir, 'converted'),
      '--output',
      os.path.join(workdir, 'back.pt'),
    ],
    **sizes,
  )


if __name__ == '__main__':
  main()
