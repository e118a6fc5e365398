"""Evaluate a trained workdir: python -m lgdlm_jax.evaluate text|sts --workdir W [flags].

  text: the evaluation suite (lgdlm_jax.evaluation.suite) over a split of the run's own data: L2T
        decodes (one pass and sampled) scored as text against the references (BLEU, token F1, exact
        match, distinct-1/2), re-encoded by the dataset's sentence encoder and compared with the
        latent they came from (against another row's latent as the control), and T2L samples
        against the true latents (cosine, recall@1/5 within each batch).
        Prints a table and writes --out (default WORKDIR/eval_text_<split>_step<N>.json): the
        metrics, a few decoded examples and what was evaluated.
  sts:  semantic similarity (the reference's evaluate_mmdit_sts.py, with DDIM T2L): a T2L latent for
        each sentence of each pair in --pairs (a local file: lgdlm_jax.evaluation.sts lists the
        layouts, the STS Benchmark's sts-test.csv among them), tokenised with the run's tokenizer,
        --steps DDIM steps, every sentence from the same noise (--seed); the cosine of each pair's two latents
        against the human scores: Spearman and Pearson. Writes --out (default
        WORKDIR/eval_sts_step<N>.json): the correlations and every pair's cosine.

--workdir is a training workdir (its config.json, tokenizer and data; the newest checkpoint or
--step; the moving average when the run kept one, else the raw parameters, or as --params says).
--split val is the run's validation split (data.val_ratio), train its training split, both in
file order, in batches of training.eval_batch_size; --max_batches caps them (0 = all).
The encoder is the one the dataset's dataset.json names (prepare_data writes it); without its
package, or for synthetic data, the re-encoding metrics are left out and one line says why.
"""

from collections.abc import Sequence
import functools
import json
import os
from typing import Any

from absl import flags
import jax
import numpy as np

from lgdlm_jax import cli
from lgdlm_jax import errors
from lgdlm_jax import model as model_lib
from lgdlm_jax import text
from lgdlm_jax.checkpoints import weight_sources as sources
from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.data import pipeline
from lgdlm_jax.data import sources as data_sources
from lgdlm_jax.data import text_dataset
from lgdlm_jax.evaluation import samplers
from lgdlm_jax.evaluation import sts
from lgdlm_jax.evaluation import suite as suite_lib
from lgdlm_jax.training import ema

MODES = ('text', 'sts')
SPLITS = ('val', 'train')
# Flags of one mode only: giving one to the other mode is an error naming it.
MODE_FLAGS = {'text': ('split', 'max_batches'), 'sts': ('pairs', 'steps', 'batch_size')}


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv

  def define(kind, name, default, *args):
    kind(name, default, *args, flag_values=flag_values)

  define(flags.DEFINE_string, 'workdir', None, 'A training workdir.')
  define(flags.DEFINE_enum, 'split', 'val', SPLITS, "The run's validation or training split.")
  define(flags.DEFINE_enum, 'params', None, ema.PARAMS_CHOICES, 'ema or raw; default ema when the workdir kept one.')
  define(flags.DEFINE_integer, 'max_batches', 0, 'Evaluate at most N batches; 0 = the whole split.')
  define(flags.DEFINE_integer, 'step', None, 'Checkpoint step; default the newest.')
  define(flags.DEFINE_integer, 'seed', 0, "Seed of the samplers' noise (batch k uses fold_in(seed, k)).")
  define(flags.DEFINE_string, 'out', None, 'The JSON report; default WORKDIR/eval_<mode>_..._step<N>.json.')
  define(flags.DEFINE_string, 'pairs', None, 'sts: the sentence pairs with their scores (tab-separated).')
  define(flags.DEFINE_integer, 'steps', 50, 'sts: DDIM steps of each T2L sample.')
  define(flags.DEFINE_integer, 'batch_size', 32, 'sts: sentences per sampler call.')


def _batches(config, split: str, max_batches: int):
  """The split's batches in file order (one pass, whole batches of training.eval_batch_size)."""
  found = data_sources.open_sources(config)
  source, keys = (found.val, found.keys[1]) if split == 'val' else (found.train, found.keys[0])
  size = int(config.training.eval_batch_size)
  if source is None or len(source) < size:
    raise errors.InputError(
      f'--split {split}: {0 if source is None else len(source)} samples, fewer than one batch of '
      f'training.eval_batch_size={size} (data.val_ratio={config.data.val_ratio})'
    )
  batches = pipeline.local_batches(
    source, keys, global_batch_size=size, seed=None, process_index=0, process_count=1, replace=False
  )
  count = len(batches) if not max_batches else min(len(batches), max_batches)
  return (batch for batch, _ in batches[:count]), count * size


def table(metrics: dict[str, float]) -> str:
  """The metrics as an aligned two-column table."""
  width = max(map(len, metrics), default=0)
  return '\n'.join(f'{name:<{width}}  {value:8.4f}' for name, value in metrics.items())


def _params_choice(args: flags.FlagValues, config) -> str:
  has_ema = ema.enabled(config)
  which = args.params or ('ema' if has_ema else 'raw')
  if which == 'ema' and not has_ema:
    raise cli.UsageError(f'--params=ema: {args.workdir} holds no moving average (trained with training.ema_decay=0)')
  return which


def _read_params(args: flags.FlagValues, which: str) -> tuple[Any, int]:
  step = workdirs.resolve_step(args.workdir, args.step)
  weights = sources.read(args.workdir, step=step, params_tree='ema_params' if which == 'ema' else 'params')
  print(f'Loaded the {weights.description} ({which} parameters)')
  return weights.params, step


def _write(out: str, report: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
  print(f'Wrote {out}')


def run_text(args: flags.FlagValues) -> None:
  config = workdirs.load_config(args.workdir)
  which = _params_choice(args, config)
  batches, rows = _batches(config, args.split, args.max_batches)  # bad data stops us before the weights are read
  params, step = _read_params(args, which)
  print(f'{args.split} split: {rows} rows')
  encoder, note = text_dataset.dataset_encoder(config.data)
  suite = suite_lib.TextSuite(model_lib.MultimodalMMDiT(config.model), config, encoder)
  for line in [note, *suite.notes]:
    print(line)
  metrics, examples = suite.run(params, batches, jax.random.key(args.seed))
  print(table(metrics))
  out = args.out or os.path.join(args.workdir, f'eval_text_{args.split}_step{step}.json')
  report = {
    'workdir': os.path.abspath(args.workdir),
    'step': step,
    'split': args.split,
    'params': which,
    'rows': rows,
    'seed': args.seed,
    'encoder': note,
    'notes': suite.notes,
    'metrics': metrics,
    'examples': examples,
  }
  _write(out, report)


def run_sts(args: flags.FlagValues) -> None:
  config = workdirs.load_config(args.workdir)
  which = _params_choice(args, config)
  pairs = sts.read_pairs(args.pairs)  # a bad file stops us before the weights are read
  if not config.tokenizer.json_file:
    raise errors.InputError(f'{args.workdir}: its config names no tokenizer (tokenizer.json_file) to tokenise --pairs')
  tokenizer = text.load_tokenizer(config.tokenizer.json_file)
  params, step = _read_params(args, which)
  print(f'{len(pairs.scores)} pairs from {args.pairs} ({pairs.layout})')
  ids, mask, truncated = text.encode(tokenizer, pairs.first + pairs.second, int(config.model.max_seq_len))
  if truncated.any():
    print(f'{int(truncated.sum())} sentences truncated to model.max_seq_len={config.model.max_seq_len} tokens')
  model = model_lib.MultimodalMMDiT(config.model)
  sampler = jax.jit(
    functools.partial(samplers.sample_t2l, model=model, config=config, steps=args.steps, same_noise=True)
  )
  # One key for every batch: every sentence starts from the same noise, so a pair's cosine reflects its texts.
  latents = samplers.batched(
    lambda *inputs: sampler(params, *inputs[:-1], jax.random.key(args.seed)),
    (ids, mask.astype(bool)),
    args.batch_size,
    args.seed,
    't2l',
  )
  count = len(pairs.scores)
  cosines = np.sum(latents[:count] * latents[count:], axis=-1) / np.maximum(
    np.linalg.norm(latents[:count], axis=-1) * np.linalg.norm(latents[count:], axis=-1), 1e-12
  )
  result = sts.correlations(cosines, pairs.scores)
  print(f'Spearman {result["spearman"]:.4f}  Pearson {result["pearson"]:.4f}  ({count} pairs; {result["method"]})')
  report = {
    'workdir': os.path.abspath(args.workdir),
    'step': step,
    'params': which,
    'pairs_file': os.path.abspath(args.pairs),
    'layout': pairs.layout,
    'steps': args.steps,
    'seed': args.seed,
    **result,
    'pairs': [
      {'sentence1': a, 'sentence2': b, 'score': float(s), 'cosine': float(c)}
      for a, b, s, c in zip(pairs.first, pairs.second, pairs.scores, cosines)
    ],
  }
  _write(args.out or os.path.join(args.workdir, f'eval_sts_step{step}.json'), report)


def work(args: flags.FlagValues, positional: list[str]) -> None:
  if len(positional) != 1 or positional[0] not in MODES:
    raise cli.UsageError(f'expected one mode, {" or ".join(MODES)}; got {" ".join(positional) or "none"}')
  if not args.workdir:
    raise cli.UsageError('--workdir is required')
  if not os.path.isdir(args.workdir):
    raise FileNotFoundError(f'--workdir {args.workdir}: no such directory')
  mode = positional[0]
  for other, names in MODE_FLAGS.items():
    given = [f'--{n}' for n in names if other != mode and args[n].present]
    if given:
      raise cli.UsageError(f'{", ".join(given)} applies to {other}, not {mode}')
  if mode == 'sts' and not args.pairs:
    raise cli.UsageError('sts needs --pairs FILE.tsv')
  for name, least in (('max_batches', 0), ('steps', 1), ('batch_size', 1)):
    if args[name].value < least:
      raise cli.UsageError(f'--{name}={args[name].value}: expected an integer >= {least}')
  if sources.kind(args.workdir) != sources.WORKDIR:
    raise cli.UsageError(f'--workdir {args.workdir} is not a training workdir (config.json and checkpoints/)')
  (run_text if mode == 'text' else run_sts)(args)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(work, define_flags, argv, doc=__doc__)


if __name__ == '__main__':
  cli.main_exit(work, define_flags, __doc__)
