"""PyTorch LGDLM checkpoints into lgdlm_jax, and lgdlm_jax weights back.

  python -m lgdlm_jax.convert --input CKPT --output DIR [--step N] [--verify] [--dtype bfloat16] [--vocab-size V ...]
  python -m lgdlm_jax.convert --to-torch --input DIR --output FILE.pt|FILE.safetensors
      [--torch-layout cycle|latentdlm|bare]
(`python convert_torch_weights.py` is the same command.)

CKPT is a reference checkpoint file (`.pt`, `.pth`, `.safetensors`; a trainer's dict or a bare state
dict) or run directory: the cycle trainer's (`checkpoints/latest.pt`, or `--step N` for step_N.pt)
or latentDLM's (`latest/checkpoint.pt`). Pickles are read without running code from them. The model
config is inferred from the tensors; flags state what the tensors cannot tell (dropout, the latent
diffusion settings), and a flag that contradicts them is an error. DIR gets params/ (Orbax),
config.json and converted.json, and, when the checkpoint holds AdamW state, optimizer/ with its
moments and step, which training takes with --config.init_from=DIR --config.init_from_optimizer=True.

With --to-torch, DIR is a converted directory or a training workdir (its newest checkpoint, or
--step N). A .pt gets the cycle trainer's checkpoint layout (`cycle`, what its --resume loads),
latentDLM's model file (`latentdlm`, what its samplers load) or the state dict alone (`bare`); a
.safetensors file holds the weights only. Outputs are written beside their destination and moved
there only when everything, --verify included, succeeded.
"""

from collections.abc import Iterator, Mapping, Sequence
import contextlib
import os
import shutil
import tempfile
from typing import Any

from absl import flags
import flax
import ml_collections
import numpy as np

from lgdlm_jax import cli
from lgdlm_jax import config as config_lib
from lgdlm_jax import errors
from lgdlm_jax.checkpoints import weight_sources as sources
from lgdlm_jax.convert import converted
from lgdlm_jax.convert import exporters
from lgdlm_jax.convert import files
from lgdlm_jax.convert import fitting
from lgdlm_jax.convert import layout
from lgdlm_jax.convert import mapping
from lgdlm_jax.convert import moments as moments_lib
from lgdlm_jax.convert import update_counts
from lgdlm_jax.objective import diffusion
from lgdlm_jax.training import optimizer as optimizer_lib

# float32 on both sides, highest matmul precision: what the mapping alone is accountable for.
DEFAULT_TOLERANCE = 1e-4
_ENUM_MODEL_FLAGS = {
  'latent_beta_schedule': diffusion.BETA_SCHEDULES,
  'latent_parameterization': diffusion.PARAMETERIZATIONS,
}
MODEL_FLAGS = layout.INFERRED_KEYS + ('latent_timesteps', 'dropout') + tuple(_ENUM_MODEL_FLAGS)


class VerificationError(errors.InputError):
  """The converted model's outputs differ from the PyTorch model's by more than the tolerance."""


def flag_name(model_key: str) -> str:
  return model_key.replace('_', '-')


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv

  def define(kind, name, default, *args):
    kind(name, default, *args, flag_values=flag_values)

  define(
    flags.DEFINE_string,
    'input',
    None,
    'PyTorch checkpoint or run directory (with --to-torch: a converted directory or a training workdir).',
  )
  define(flags.DEFINE_string, 'output', None, 'Directory to create (with --to-torch: a .pt or .safetensors file).')
  define(flags.DEFINE_boolean, 'to-torch', False, 'Export lgdlm_jax weights to PyTorch.')
  define(
    flags.DEFINE_enum,
    'torch-layout',
    None,
    exporters.LAYOUTS,
    'With --to-torch to a .pt: cycle (default; the '
    "cycle trainer's --resume loads it), latentdlm (its samplers load it) or bare (the state dict).",
  )
  define(
    flags.DEFINE_integer,
    'step',
    None,
    'The checkpoint step of a training workdir (--to-torch) or of the cycle '
    "trainer's run directory (step_N.pt); default the newest.",
  )
  define(flags.DEFINE_enum, 'dtype', None, ('float32', 'bfloat16'), 'Cast the weights (default: the stored dtype).')
  define(flags.DEFINE_boolean, 'unsafe-pickle', False, 'Unpickle whatever code the file names (trusted files only).')
  define(flags.DEFINE_boolean, 'allow-missing', False, 'Initialise parameters the checkpoint lacks.')
  define(flags.DEFINE_boolean, 'allow-unexpected', False, 'Drop tensors the model does not have.')
  define(flags.DEFINE_boolean, 'allow-mismatched', False, 'Drop tensors of the wrong shape and initialise them.')
  define(flags.DEFINE_boolean, 'verify', False, 'Compare the PyTorch and Flax outputs (needs torch and mmdit).')
  define(flags.DEFINE_float, 'tolerance', DEFAULT_TOLERANCE, '--verify: the largest |difference| allowed.')
  define(flags.DEFINE_integer, 'seed', 0, 'Seed of the --verify batch and of initialised parameters.')
  define(flags.DEFINE_boolean, 'overwrite', False, 'Replace an existing output.')
  for key in layout.INFERRED_KEYS:
    define(flags.DEFINE_integer, flag_name(key), None, f'model.{key}; checked against the tensors.')
  define(flags.DEFINE_integer, 'latent-timesteps', None, 'model.latent_timesteps (not in the tensors).')
  define(flags.DEFINE_float, 'dropout', None, 'model.dropout (not in the tensors).')
  for key, choices in _ENUM_MODEL_FLAGS.items():
    define(flags.DEFINE_enum, flag_name(key), None, choices, f'model.{key} (not in the tensors).')
  for name in ('input', 'output'):
    flags.mark_flag_as_required(name, flag_values=flag_values)


def work(flag_values: flags.FlagValues, args: list[str]) -> None:
  if args:
    raise cli.UsageError(f'unexpected arguments: {" ".join(args)}')
  if flag_values['torch-layout'].value is not None and not flag_values['to-torch'].value:
    raise cli.UsageError('--torch-layout applies to --to-torch')
  (_to_torch if flag_values['to-torch'].value else _to_flax)(flag_values)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(work, define_flags, argv, doc=__doc__)


def _to_flax(args: flags.FlagValues) -> None:
  checkpoint = files.read_checkpoint(args.input, args['unsafe-pickle'].value, args.step)
  notes = [f"unwrapped '{k}'" for k in checkpoint.unwrapped] + [f"stripped prefix '{p}'" for p in checkpoint.stripped]
  if checkpoint.set_aside:
    notes.append(f"set aside the trainer's buffers {', '.join(checkpoint.set_aside)} (not model parameters)")
  print(
    f'read {checkpoint.path} ({checkpoint.chosen}): {len(checkpoint.state_dict)} tensors, '
    f'{_count(checkpoint.state_dict):,} parameters, {_dtypes(checkpoint.state_dict)}' + ''.join(f'; {n}' for n in notes)
  )
  stated = {key: args[flag_name(key)].value for key in MODEL_FLAGS}
  inferred = layout.infer_model_config(checkpoint.state_dict, stated, checkpoint.saved_config)
  model_config = inferred.config
  print(f'residual layout: {layout.LAYOUT_NAMES[inferred.layout]}, R={model_config.num_residual_streams}')
  print('model config:')
  for key, source in inferred.sources.items():
    print(f'  {key}={model_config[key]} ({source})')
  allow = fitting.Allowances(
    args['allow-missing'].value, args['allow-unexpected'].value, args['allow-mismatched'].value
  )
  fitted = fitting.fit(checkpoint.state_dict, model_config, allow, args.seed)
  print('\n'.join(fitted.report))
  state_dict = exporters.cast(fitted.state_dict, args.dtype)
  params = mapping.torch_to_flax(state_dict, model_config)
  flat = flax.traverse_util.flatten_dict(params)
  print(
    f'converted {len(state_dict)} tensors ({_count(state_dict):,} parameters) into {len(flat)} Flax arrays '
    f'({_count(flat):,} parameters), {_dtypes(flat)}'
  )
  moments = _moments(checkpoint, model_config, fitted.changed)
  done = 'unknown' if checkpoint.steps_done is None else f'{checkpoint.steps_done} micro-batches done'
  print(f'step: {done} ({checkpoint.step_source})')
  info = {
    'source': os.path.abspath(checkpoint.path),
    'steps_done': checkpoint.steps_done,
    'step_source': checkpoint.step_source,
    'tokenizer': sources.tokenizer_ids(checkpoint.saved_config),
  }
  with _staged(args.output, args.overwrite) as staged:
    converted.save(staged, params, model_config, info, moments)
    if args.verify:
      _verify(model_config, state_dict, converted.load_params(staged, model_config), args)
  written = [f'{converted.PARAMS_DIR}/ (Orbax)', config_lib.CONFIG_FILE, converted.INFO_FILE]
  if moments is not None:
    written.append(f'{converted.OPTIMIZER_DIR}/ (AdamW moments)')
  print(f'wrote {args.output}: {", ".join(written)}')


def _moments(
  checkpoint: files.TorchCheckpoint, model_config: ml_collections.ConfigDict, changed: bool
) -> moments_lib.AdamMoments | None:
  """The checkpoint's AdamW moments when they fit the converted parameters; says why not otherwise."""
  if checkpoint.optimizer_state is None:
    print(f'optimizer state: none in the checkpoint (no {files.OPTIMIZER_KEY})')
    return None
  if changed:
    print('optimizer state: not converted, since --allow-* changed the parameters it belongs to')
    return None
  try:
    moments = moments_lib.from_torch(checkpoint.optimizer_state, checkpoint.state_dict, model_config)
  except mapping.ConversionError as e:  # the weights still convert; training can start from them alone
    print(f'optimizer state: not converted: {e}')
    return None
  hyper = ', '.join(f'{k}={v}' for k, v in moments.hyperparameters.items())
  print(f'optimizer state: AdamW moments after {moments.updates} updates ({hyper})')
  if moments.unit_updates is not None:
    counts = sorted(set(update_counts.to_torch(moments.unit_updates).values()))
    print(f'  its tensors had different update counts ({", ".join(map(str, counts))}): kept per tensor')
  return moments


def _to_torch(args: flags.FlagValues) -> None:
  torch_layout = exporters.layout_for(args.output, args['torch-layout'].value)
  if sources.kind(args.input) == sources.TORCH:
    raise FileNotFoundError(
      f'{args.input} is neither a converted directory (no {converted.PARAMS_DIR}/) nor a '
      f'training workdir ({config_lib.CONFIG_FILE} and checkpoints/): --to-torch exports those'
    )
  has_optimizer_state = sources.kind(args.input) == sources.WORKDIR or os.path.isdir(
    os.path.join(args.input, converted.OPTIMIZER_DIR)
  )
  weights = sources.read(
    args.input, step=args.step, with_moments=torch_layout == exporters.CYCLE and has_optimizer_state
  )
  print(f'read {weights.description}')
  state_dict = exporters.ordered_state_dict(weights.params, weights.model_config, args.dtype)
  with _staged(args.output, args.overwrite) as staged:
    schedule = None if weights.config is None else optimizer_lib.learning_rate_schedule(weights.config)
    held = exporters.write(staged, torch_layout, weights, state_dict, schedule)
    if args.verify:
      _verify(weights.model_config, files.read_checkpoint(staged).state_dict, weights.params, args)
  print(
    f'wrote {args.output}: {held}; {len(state_dict)} tensors, {_count(state_dict):,} parameters, {_dtypes(state_dict)}'
  )


def _verify(
  model_config: ml_collections.ConfigDict, state_dict: Mapping[str, np.ndarray], params: Any, args: flags.FlagValues
) -> None:
  try:
    from lgdlm_jax.convert import verify  # pylint: disable=g-import-not-at-top  (needs torch and mmdit)
  except ImportError as e:
    raise VerificationError(f'--verify needs torch and mmdit ({e}); pip install -e ".[reference]"') from e
  differences = verify.max_abs_differences(model_config, state_dict, params, args.seed)
  print(f'verify (seeded batch, seed {args.seed}; float32, highest matmul precision; tolerance {args.tolerance:g}):')
  for name, difference in differences.items():
    print(f'  {name}: max |PyTorch - Flax| = {difference:.3g}')
  worst = max(differences, key=differences.get)
  if differences[worst] > args.tolerance:
    raise VerificationError(
      f'{worst} differs by {differences[worst]:.3g} > tolerance {args.tolerance:g}; nothing was written'
    )


def _count(arrays: Mapping[Any, np.ndarray]) -> int:
  return sum(int(np.size(v)) for v in arrays.values())


def _dtypes(arrays: Mapping[Any, np.ndarray]) -> str:
  return '/'.join(sorted({str(np.asarray(v).dtype) for v in arrays.values()}))


@contextlib.contextmanager
def _staged(output: str, overwrite: bool) -> Iterator[str]:
  """Yields a path in a scratch directory beside `output` (same name, so the same extension); the
  result moves to `output` only if the block succeeds, and the scratch directory always goes."""
  output = os.path.abspath(output)
  if os.path.lexists(output) and not overwrite:
    raise FileExistsError(f'{output} exists; pass --overwrite to replace it')
  parent, name = os.path.split(output)
  os.makedirs(parent, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix=f'.{name}.', dir=parent)
  try:
    staged = os.path.join(scratch, name)
    yield staged
    if os.path.isdir(output) and not os.path.islink(output):
      shutil.rmtree(output)
    elif os.path.lexists(output):
      os.remove(output)
    os.replace(staged, output)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
  cli.main_exit(work, define_flags, __doc__)
