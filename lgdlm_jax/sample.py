"""Sample from a trained workdir: python -m lgdlm_jax.sample l2t|t2l|unconditional --workdir DIR --out DIR [flags].

  l2t: latents -> text. --latents is a directory of NAME.npy files (the training layout) or one
       .npy file of shape [D] or [N,D]. Writes OUT/tokens/NAME_tokens.npz (input_ids int32,
       attention_mask uint8 = id != [PAD]) and, with a tokenizer, OUT/texts.txt (NAME<TAB>text).
       --temperature, --top_k, --top_p, --min_p shape each position's distribution. Every --seq_len
       position is decoded, or, for a model with a length head (trained with
       loss.text_positions='valid'), as many as it predicts from each latent; --length N decodes N.
  t2l: text -> latents. --texts is a text file (one text per non-empty line; needs a tokenizer) or
       a directory of NAME[_tokens].npz token files, or --text_prompt one text (--num_samples
       samples of it). Texts are tokenised to --max_length (default model.max_seq_len) tokens.
       Writes OUT/latents/NAME.npy (float32 [D]). --guidance_scale s != 1: classifier-free guidance
       on the null condition (all [PAD]), which only a run with loss.condition_dropout > 0 trained.
  unconditional: --num_samples texts and latents generated together (--two_stage: the reference's
       T2L on the null condition, then L2T); writes both layouts.
Every mode also writes OUT/results.json: the settings and, per sample, its name, text and files.

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

from lgdlm_jax import cli
from lgdlm_jax import config as config_lib
from lgdlm_jax import errors
from lgdlm_jax import model as model_lib
from lgdlm_jax import text
from lgdlm_jax.checkpoints import weight_sources as sources
from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.data import sample_files
from lgdlm_jax.evaluation import joint_sampler
from lgdlm_jax.evaluation import outputs
from lgdlm_jax.evaluation import samplers
from lgdlm_jax.training import ema

_DEFAULT_STEPS = {'l2t': 20, 't2l': 50, 'unconditional': 50}


def token_sampling(args: flags.FlagValues) -> samplers.TokenSampling:
  sampling = samplers.TokenSampling(args.temperature, args.top_k, args.top_p, args.min_p)
  try:
    sampling.check()
  except errors.ConfigError as e:
    raise cli.UsageError(f'--{e}') from e
  return sampling


def results_header(args: flags.FlagValues, mode: str) -> dict:
  return {'mode': mode, 'workdir': args.workdir, 'settings': {name: args[name].value for name in _RESULT_FLAGS[mode]}}


def run_l2t(args: flags.FlagValues, config, params, model, tokenizer) -> None:
  names, latents = sample_files.read_latents(args.latents, int(config.model.latent_dim))
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
    **token_sampling(args)._asdict(),
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
  tokens = samplers.batched(functools.partial(jax.jit(sampler), params), (latents,), args.batch_size, args.seed, 'l2t')
  texts = outputs.write_tokens(args.out, names, tokens, int(config.tokenizer.pad_token_id), tokenizer)
  outputs.write_results(
    args.out, results_header(args, 'l2t'), names, texts, {'tokens_file': 'tokens/{name}_tokens.npz'}
  )


def t2l_inputs(args: flags.FlagValues, config, tokenizer) -> tuple[list[str], list[str] | None, np.ndarray, np.ndarray]:
  """(names, texts or None, input_ids [N,S], attention_mask bool [N,S]) from --texts or --text_prompt."""
  max_seq_len = int(config.model.max_seq_len)
  max_length = args.max_length or max_seq_len
  if not 0 < max_length <= max_seq_len:
    raise cli.UsageError(f'--max_length={args.max_length}: must be in 1..model.max_seq_len={max_seq_len}')
  if args.texts and os.path.isdir(args.texts):
    names, ids, mask = sample_files.read_token_dir(args.texts, config)
    return names, None, ids, mask
  if tokenizer is None:
    raise cli.UsageError("t2l from text needs --tokenizer (or the config's tokenizer.json_file)")
  lines = [args.text_prompt] * (args.num_samples or 1) if args.text_prompt else text.read_lines(args.texts)
  ids, mask, truncated = text.encode(tokenizer, lines, max_length)
  if truncated.any():
    logging.warning('%d texts were truncated to --max_length=%d tokens', truncated.sum(), max_length)
  pad = ((0, 0), (0, max_seq_len - max_length))
  ids = np.pad(ids, pad, constant_values=int(config.tokenizer.pad_token_id))
  return [f'{i:06d}' for i in range(len(lines))], lines, ids, np.pad(mask, pad).astype(bool)


def run_t2l(args: flags.FlagValues, config, params, model, tokenizer) -> None:
  names, texts, ids, mask = t2l_inputs(args, config, tokenizer)
  if args.num_samples:
    names, ids, mask = names[: args.num_samples], ids[: args.num_samples], mask[: args.num_samples]
    texts = None if texts is None else texts[: args.num_samples]
  if args.guidance_scale != 1.0 and not config.loss.condition_dropout:
    logging.warning(
      '--guidance_scale=%s: this model was trained with loss.condition_dropout=0, so it never saw the null '
      'condition that guidance contrasts with; expect guidance to hurt rather than help',
      args.guidance_scale,
    )
  sampler = jax.jit(
    functools.partial(
      samplers.sample_t2l,
      model=model,
      config=config,
      steps=args.steps or _DEFAULT_STEPS['t2l'],
      guidance_scale=args.guidance_scale,
    )
  )
  latents = samplers.batched(functools.partial(sampler, params), (ids, mask), args.batch_size, args.seed, 't2l')
  outputs.write_latents(args.out, names, latents)
  outputs.write_results(args.out, results_header(args, 't2l'), names, texts, {'latent_file': 'latents/{name}.npy'})


def run_unconditional(args: flags.FlagValues, config, params, model, tokenizer) -> None:
  if not args.num_samples:
    raise cli.UsageError('unconditional takes --num_samples N (how many to generate)')
  seq_len = args.seq_len or int(config.model.max_seq_len)
  sampling = token_sampling(args)
  common = dict(model=model, config=config, batch=args.batch_size, seq_len=seq_len, sampling=sampling)
  steps = args.steps or _DEFAULT_STEPS['unconditional']
  if args.two_stage:
    draw = functools.partial(joint_sampler.sample_two_stage, text_steps=steps, latent_steps=args.latent_steps, **common)
  else:
    draw = functools.partial(joint_sampler.sample_joint, steps=steps, **common)
  # The rows only set how many samples a batch holds; the sampler reads its key alone.
  sampler = jax.jit(lambda params, rows, key: draw(params, key))
  names = [f'{i:06d}' for i in range(args.num_samples)]
  rows = (np.arange(args.num_samples),)
  tokens, latents = samplers.batched(
    functools.partial(sampler, params), rows, args.batch_size, args.seed, 'unconditional'
  )
  texts = outputs.write_tokens(args.out, names, tokens, int(config.tokenizer.pad_token_id), tokenizer)
  outputs.write_latents(args.out, names, latents)
  outputs.write_results(
    args.out,
    results_header(args, 'unconditional'),
    names,
    texts,
    {'tokens_file': 'tokens/{name}_tokens.npz', 'latent_file': 'latents/{name}.npy'},
  )


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  define = lambda kind, name, default, help_string: kind(name, default, help_string, flag_values=flag_values)
  define(flags.DEFINE_string, 'workdir', None, 'A training workdir or a converted directory.')
  define(flags.DEFINE_string, 'out', None, 'Output directory.')
  define(flags.DEFINE_integer, 'step', None, 'Checkpoint step; default the newest.')
  define(flags.DEFINE_string, 'tokenizer', None, "tokenizer.json; default the config's tokenizer.json_file.")
  define(flags.DEFINE_string, 'latents', None, 'l2t input: a directory of .npy files or one .npy file.')
  define(flags.DEFINE_string, 'texts', None, 't2l input: a text file, or a directory of token .npz files.')
  define(flags.DEFINE_string, 'text_prompt', None, 't2l input: one text, sampled --num_samples times (default 1).')
  define(
    flags.DEFINE_integer, 'max_length', None, 't2l: tokens per text (truncated beyond); default model.max_seq_len.'
  )
  define(flags.DEFINE_float, 'guidance_scale', 1.0, 't2l: classifier-free guidance scale; 1 = none.')
  define(flags.DEFINE_integer, 'steps', None, 'Sampler steps; default 20 (l2t), 50 (t2l, unconditional).')
  define(flags.DEFINE_float, 'temperature', 1.0, 'Token sampling temperature (l2t, unconditional); 0 = greedy.')
  define(flags.DEFINE_integer, 'top_k', 0, 'Sample among the k most probable tokens only; 0 = all.')
  define(flags.DEFINE_float, 'top_p', 1.0, 'Sample among the most probable tokens holding this mass; 1 = all.')
  define(flags.DEFINE_float, 'min_p', 0.0, 'Sample among tokens at least this fraction as probable as the top one.')
  define(flags.DEFINE_integer, 'seq_len', None, 'l2t / unconditional text length; default model.max_seq_len.')
  define(
    flags.DEFINE_integer,
    'length',
    None,
    'l2t: decode N tokens of each text (padding after them); default: all --seq_len positions, or the '
    "length head's prediction for a model that has one (model.length_head).",
  )
  define(
    flags.DEFINE_boolean, 'two_stage', False, "unconditional: the reference's T2L on the null condition, then L2T."
  )
  define(flags.DEFINE_integer, 'latent_steps', 50, 'unconditional --two_stage: T2L steps of the first stage.')
  define(flags.DEFINE_integer, 'batch_size', 16, 'Samples per sampler call.')
  define(flags.DEFINE_integer, 'num_samples', 0, 'Use only the first N inputs (unconditional: generate N); 0 = all.')
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


_TOKEN_FLAGS = ('temperature', 'top_k', 'top_p', 'min_p', 'seq_len')
# The flags each mode reads besides the common ones; any other mode's flag given is an error.
_MODE_FLAGS = {
  'l2t': ('latents', 'length') + _TOKEN_FLAGS,
  't2l': ('texts', 'text_prompt', 'max_length', 'guidance_scale'),
  'unconditional': _TOKEN_FLAGS + ('two_stage', 'latent_steps'),
}
_RESULT_FLAGS = {
  'l2t': ('steps', 'seed', 'temperature', 'top_k', 'top_p', 'min_p', 'seq_len', 'length', 'params', 'step'),
  't2l': ('steps', 'seed', 'max_length', 'guidance_scale', 'params', 'step'),
  'unconditional': (
    'steps',
    'seed',
    'temperature',
    'top_k',
    'top_p',
    'min_p',
    'seq_len',
    'two_stage',
    'latent_steps',
    'params',
    'step',
  ),
}


def _check_args(args: flags.FlagValues, positional: list[str]) -> str:
  """The mode, after checking that the flags it needs, and no other mode's, are given."""
  if len(positional) != 1 or positional[0] not in _DEFAULT_STEPS:
    raise cli.UsageError(f'expected one mode, {", ".join(_DEFAULT_STEPS)}; got {" ".join(positional) or "none"}')
  mode = positional[0]
  for name in ('workdir', 'out'):
    if not args[name].value:
      raise cli.UsageError(f'--{name} is required')
  for other, names in _MODE_FLAGS.items():
    for name in names:
      if other != mode and name not in _MODE_FLAGS[mode] and args[name].present:
        raise cli.UsageError(f'--{name} is for {other} only, not {mode}')
  if mode == 'l2t' and not args.latents:
    raise cli.UsageError('l2t takes --latents')
  if mode == 't2l' and bool(args.texts) == bool(args.text_prompt):
    raise cli.UsageError('t2l takes --texts or --text_prompt (one of them)')
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
  {'l2t': run_l2t, 't2l': run_t2l, 'unconditional': run_unconditional}[mode](args, config, params, model, tokenizer)


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
