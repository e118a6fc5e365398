"""Sample from a trained workdir: python -m lgdlm_jax.sample l2t|t2l --workdir DIR --out DIR [flags].

  l2t: latents -> text. --latents is a directory of NAME.npy files (the training layout) or one
       .npy file of shape [D] or [N,D]. Writes OUT/tokens/NAME_tokens.npz (input_ids int32,
       attention_mask uint8 = id != [PAD]) and, with a tokenizer, OUT/texts.txt (NAME<TAB>text).
       Every --seq_len position is decoded, or, for a model with a length head (trained with
       loss.text_positions='valid'), as many as it predicts from each latent; --length N decodes N.
  t2l: text -> latents. --texts is a text file (one text per non-empty line; needs a tokenizer) or
       a directory of NAME[_tokens].npz token files. Writes OUT/latents/NAME.npy (float32 [D]).

--workdir is a training workdir (params of its newest checkpoint, or --step: the moving average when
the run kept one (training.ema_decay > 0), else the raw parameters, or as --params says; the config
from its config.json) or a directory the converter wrote (its params and model config; the tokenizer
ids from what the converted checkpoint said, or --mask_token_id / --pad_token_id). The tokenizer
comes from --tokenizer, else the config's tokenizer.json_file.
Every latent and token file is validated as training validates its data (a float latent of size
model.latent_dim without NaN or inf; integer ids below the vocabulary size, at most model.max_seq_len
of them, shorter ones padded); a bad one stops the command with one line naming the file.
Inputs are processed in batches of --batch_size (the last one padded, so one compiled sampler
serves them all); each batch is one jitted sampler call. Names from a single .npy or a text
file are the 6-digit row / line index.
"""

from collections.abc import Sequence
import functools
import os

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from lgdlm_jax import cli
from lgdlm_jax import config as config_lib
from lgdlm_jax import errors
from lgdlm_jax import model as model_lib
from lgdlm_jax import text
from lgdlm_jax.checkpoints import weight_sources as sources
from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.data import formats
from lgdlm_jax.evaluation import samplers
from lgdlm_jax.training import ema

_DEFAULT_STEPS = {'l2t': 20, 't2l': 50}


def read_latents(path: str, latent_dim: int) -> tuple[list[str], np.ndarray]:
  """(names, latents float32 [N,D]) from a directory of NAME.npy or one [D] / [N,D] file, each latent
  validated as training validates it (float, finite, D = model.latent_dim); InputError naming the file."""
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if f.endswith('.npy'))
    if not files:
      raise errors.InputError(f'--latents {path}: no .npy files in the directory')
    latents = [_latent(os.path.join(path, f), latent_dim) for f in files]
    return [f[: -len('.npy')] for f in files], np.stack(latents)
  array = formats.read_latent_file(path)
  if array.ndim not in (1, 2) or array.size == 0:
    raise errors.InputError(f'{path}: latents of shape {array.shape}, expected [{latent_dim}] or [N, {latent_dim}]')
  rows = array[None] if array.ndim == 1 else array
  latents = [formats.check_latent(row, f'{path} row {i}', latent_dim) for i, row in enumerate(rows)]
  return [f'{i:06d}' for i in range(len(latents))], np.stack(latents)


def _latent(path: str, latent_dim: int) -> np.ndarray:
  return formats.check_latent(formats.read_latent_file(path), path, latent_dim)


def read_token_dir(path: str, config: config_lib.Config) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(names, input_ids [N,S], attention_mask bool [N,S]) from NAME[_tokens].npz files, each validated as
  training validates it and right-padded to S = model.max_seq_len; InputError naming the file."""
  files = sorted(f for f in os.listdir(path) if f.endswith('.npz'))
  if not files:
    raise errors.InputError(
      f'--texts {path}: no .npz token files in the directory (t2l takes a directory of '
      'NAME[_tokens].npz files, or a text file)'
    )
  spec = formats.SampleSpec(
    int(config.model.max_seq_len), 0, int(config.model.vocab_size), int(config.tokenizer.pad_token_id)
  )
  ids, masks = [], []
  for f in files:
    file_path = os.path.join(path, f)
    row_ids, row_mask = formats.check_tokens(
      *formats.read_token_file(file_path), file_path, max_len=spec.seq_len, vocab_size=spec.vocab_size
    )
    padded = formats.pad_tokens(row_ids, row_mask, spec)
    ids.append(padded['input_ids'])
    masks.append(padded['attention_mask'])
  names = [f[: -len('_tokens.npz')] if f.endswith('_tokens.npz') else f[: -len('.npz')] for f in files]
  return names, np.stack(ids), np.stack(masks)


def batched(fn, inputs: tuple[np.ndarray, ...], batch_size: int, seed: int, desc: str) -> np.ndarray:
  """fn(*batch_inputs, key) over fixed-size batches (the last padded by repeating its last row).

  fn is a partial of a jitted sampler with the params bound as its first argument, so the params
  stay a jit argument rather than being baked into the compiled program as constants.
  """
  num = len(inputs[0])
  outputs = []
  for k, start in enumerate(tqdm.trange(0, num, batch_size, desc=desc)):
    rows = np.minimum(np.arange(start, start + batch_size), num - 1)
    out = fn(*(x[rows] for x in inputs), jax.random.fold_in(jax.random.key(seed), k))
    outputs.append(np.asarray(out)[: min(batch_size, num - start)])
  return np.concatenate(outputs)


def run_l2t(args: flags.FlagValues, config, params, model, tokenizer) -> None:
  names, latents = read_latents(args.latents, int(config.model.latent_dim))
  if args.num_samples:
    names, latents = names[: args.num_samples], latents[: args.num_samples]
  seq_len = args.seq_len or int(config.model.max_seq_len)
  if args.length is not None and not 1 <= args.length <= seq_len:
    raise cli.UsageError(f'--length {args.length}: expected 1..{seq_len} (the decoded text length, --seq_len)')
  sample = functools.partial(
    samplers.sample_l2t,
    model=model,
    config=config,
    seq_len=seq_len,
    steps=args.steps or _DEFAULT_STEPS['l2t'],
    temperature=args.temperature,
  )

  def sampler(params, latents_BxD, rng):
    lengths_B = None
    if args.length is not None:
      lengths_B = jnp.full(latents_BxD.shape[:1], args.length, jnp.int32)
    elif config.model.length_head:
      lengths_B = samplers.predicted_lengths(params, latents_BxD, model=model)
    return sample(params, latents_BxD, rng, lengths_B=lengths_B)

  if args.length is None and config.model.length_head:
    print("Each text's length: the length head's prediction from its latent (--length N overrides it)")
  jitted = jax.jit(sampler)
  tokens = batched(functools.partial(jitted, params), (latents,), args.batch_size, args.seed, 'l2t')
  token_dir = os.path.join(args.out, 'tokens')
  os.makedirs(token_dir, exist_ok=True)
  mask = (tokens != int(config.tokenizer.pad_token_id)).astype(np.uint8)
  for name, ids, m in zip(names, tokens, mask):
    np.savez(os.path.join(token_dir, f'{name}_tokens.npz'), input_ids=ids, attention_mask=m)
  if tokenizer is not None:
    texts = text.decode(tokenizer, tokens)
    with open(os.path.join(args.out, 'texts.txt'), 'w', encoding='utf-8') as f:
      f.writelines(f'{name}\t{t}\n' for name, t in zip(names, texts))
    for name, t in list(zip(names, texts))[:10]:
      print(f'{name}: {t}')
  print(f'Wrote {len(names)} token files to {token_dir}')


def run_t2l(args: flags.FlagValues, config, params, model, tokenizer) -> None:
  source = args.texts
  if os.path.isdir(source):
    names, ids, mask = read_token_dir(source, config)
  else:
    if tokenizer is None:
      raise cli.UsageError("t2l from a text file needs --tokenizer (or the config's tokenizer.json_file)")
    lines = text.read_lines(source)
    names = [f'{i:06d}' for i in range(len(lines))]
    ids, mask, truncated = text.encode(tokenizer, lines, int(config.model.max_seq_len))
    if truncated.any():
      logging.warning('%d texts were truncated to %d tokens', truncated.sum(), config.model.max_seq_len)
  if args.num_samples:
    names, ids, mask = names[: args.num_samples], ids[: args.num_samples], mask[: args.num_samples]
  sampler = jax.jit(
    functools.partial(samplers.sample_t2l, model=model, config=config, steps=args.steps or _DEFAULT_STEPS['t2l'])
  )
  latents = batched(functools.partial(sampler, params), (ids, mask.astype(bool)), args.batch_size, args.seed, 't2l')
  latent_dir = os.path.join(args.out, 'latents')
  os.makedirs(latent_dir, exist_ok=True)
  for name, latent in zip(names, latents):
    np.save(os.path.join(latent_dir, f'{name}.npy'), latent.astype(np.float32))
  print(f'Wrote {len(names)} latents to {latent_dir}')


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  define = lambda kind, name, default, help_string: kind(name, default, help_string, flag_values=flag_values)
  define(flags.DEFINE_string, 'workdir', None, 'A training workdir or a converted directory.')
  define(flags.DEFINE_string, 'out', None, 'Output directory.')
  define(flags.DEFINE_integer, 'step', None, 'Checkpoint step; default the newest.')
  define(flags.DEFINE_string, 'tokenizer', None, "tokenizer.json; default the config's tokenizer.json_file.")
  define(flags.DEFINE_string, 'latents', None, 'l2t input: a directory of .npy files or one .npy file.')
  define(flags.DEFINE_string, 'texts', None, 't2l input: a text file, or a directory of token .npz files.')
  define(flags.DEFINE_integer, 'steps', None, 'Sampler steps; default 20 (l2t) or 50 (t2l).')
  define(flags.DEFINE_float, 'temperature', 1.0, 'l2t sampling temperature; 0 = greedy.')
  define(flags.DEFINE_integer, 'seq_len', None, 'l2t text length; default model.max_seq_len.')
  define(
    flags.DEFINE_integer,
    'length',
    None,
    'l2t: decode N tokens of each text (padding after them); default: all --seq_len positions, or the '
    "length head's prediction for a model that has one (model.length_head).",
  )
  define(flags.DEFINE_integer, 'batch_size', 16, 'Samples per sampler call.')
  define(flags.DEFINE_integer, 'num_samples', 0, 'Use only the first N inputs; 0 = all.')
  define(flags.DEFINE_integer, 'seed', 0, 'Random seed; batch k uses fold_in(seed, k).')
  define(flags.DEFINE_integer, 'mask_token_id', None, 'Overrides the [MASK] id of the workdir or converted directory.')
  define(flags.DEFINE_integer, 'pad_token_id', None, 'Overrides the [PAD] id of the workdir or converted directory.')
  flags.DEFINE_enum(
    'params',
    None,
    ema.PARAMS_CHOICES,
    'ema (the moving average) or raw; default ema when the training workdir kept one.',
    flag_values=flag_values,
  )


def _check_args(args: flags.FlagValues, positional: list[str]) -> str:
  """The mode (l2t or t2l), after checking that the flags it needs, and no others, are given."""
  if len(positional) != 1 or positional[0] not in _DEFAULT_STEPS:
    raise cli.UsageError(f'expected one mode, l2t or t2l; got {" ".join(positional) or "none"}')
  mode = positional[0]
  for name in ('workdir', 'out'):
    if not args[name].value:
      raise cli.UsageError(f'--{name} is required')
  if (mode == 'l2t') != bool(args.latents) or (mode == 't2l') != bool(args.texts):
    raise cli.UsageError('l2t takes --latents, t2l takes --texts')
  if args.length is not None and (mode != 'l2t' or args.length < 1):
    raise cli.UsageError(f'--length {args.length}: l2t only, and at least 1')
  return mode


def work(args: flags.FlagValues, positional: list[str]) -> None:
  mode = _check_args(args, positional)
  if not os.path.exists(args.workdir):
    raise FileNotFoundError(f'--workdir {args.workdir}: no such file or directory')
  source_kind = sources.kind(args.workdir)
  if source_kind == sources.TORCH:
    raise cli.UsageError(
      f'--workdir {args.workdir} is neither a training workdir nor a converted directory; for a '
      'PyTorch checkpoint, convert it first (python -m lgdlm_jax.convert --input CKPT --output DIR)'
    )
  for name in ('latents', 'texts', 'tokenizer'):  # before any weights are read
    if args[name].value and not os.path.exists(args[name].value):
      raise FileNotFoundError(f'--{name} {args[name].value}: no such file or directory')
  saved = workdirs.load_config(args.workdir) if source_kind == sources.WORKDIR else None
  has_ema = saved is not None and ema.enabled(saved)
  which = args.params or ('ema' if has_ema else 'raw')
  if which == 'ema' and not has_ema:
    raise cli.UsageError(
      f'--params=ema: {args.workdir} holds no moving average (not a training workdir, or trained '
      'with training.ema_decay=0)'
    )
  weights = sources.read(args.workdir, step=args.step, params_tree='ema_params' if which == 'ema' else 'params')
  config = sampling_config(weights, args.mask_token_id, args.pad_token_id)
  params = weights.params
  print(f'Loaded the {weights.description} ({which} parameters)')
  tokenizer_path = args.tokenizer or config.tokenizer.json_file
  tokenizer = text.load_tokenizer(tokenizer_path) if tokenizer_path else None
  model = model_lib.MultimodalMMDiT(config.model)
  os.makedirs(args.out, exist_ok=True)
  (run_l2t if mode == 'l2t' else run_t2l)(args, config, params, model, tokenizer)


def sampling_config(weights: sources.Weights, mask_token_id: int | None, pad_token_id: int | None) -> config_lib.Config:
  """The run's config (a workdir's, or the schema's with the converted model and the tokenizer ids
  the source stated), with the ids given on the command line."""
  config = config_lib.default_config() if weights.config is None else weights.config.as_configdict()
  if weights.config is None:
    config.model.update(dict(weights.model_config.items()))  # values, not the schema's placeholders
    config.tokenizer.update(weights.tokenizer)
  for key, value in (('mask_token_id', mask_token_id), ('pad_token_id', pad_token_id)):
    if value is not None:
      config.tokenizer[key] = value
  try:
    return config_lib.finalize(config)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(
      f'{e} (with the {weights.description}; --mask_token_id and --pad_token_id set the tokenizer ids)'
    ) from e


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(work, define_flags, argv, doc=__doc__)


if __name__ == '__main__':
  cli.main_exit(work, define_flags, __doc__)
