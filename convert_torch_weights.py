"""Brings a pretrained PyTorch LGDLM checkpoint into lgdlm_jax, and lgdlm_jax params back.

  python convert_torch_weights.py --input CKPT --output DIR [--verify] [--dtype bfloat16] [--vocab-size V ...]
  python convert_torch_weights.py --to-torch --input DIR_OR_WORKDIR --output FILE.pt|FILE.safetensors [--step N]

CKPT is a `checkpoint.pt`, `model.pth` or `model_final.pth` (a trainer's dict or a bare state dict),
a `.safetensors` file, or a run directory holding one. The model config is inferred from the
tensors; flags state what the tensors cannot tell (dropout, latent diffusion settings), and a flag
that contradicts them is an error. DIR gets params/ (Orbax) and config.json. Outputs are written
beside their destination and moved there only when everything, --verify included, succeeded.
"""

import argparse
from collections.abc import Iterator, Mapping
import contextlib
import os
import shutil
import sys
import tempfile
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lgdlm_jax import convert
from lgdlm_jax import converted
from lgdlm_jax import diffusion
from lgdlm_jax import model as model_lib
from lgdlm_jax import pretrained
from lgdlm_jax.torch_interop import files
from lgdlm_jax.torch_interop import layout

# float32 on both sides, highest matmul precision: what the mapping alone is accountable for.
DEFAULT_TOLERANCE = 1e-4
_MODEL_FLAGS: dict[str, dict[str, Any]] = {
    **{key: dict(type=int) for key in layout.INFERRED_KEYS},
    'dropout': dict(type=float),
    'latent_timesteps': dict(type=int),
    'latent_beta_schedule': dict(choices=diffusion.BETA_SCHEDULES),
    'latent_parameterization': dict(choices=diffusion.PARAMETERIZATIONS),
}


class VerificationError(ValueError):
  """The converted model's outputs differ from the PyTorch model's by more than the tolerance."""


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--input', required=True, help='PyTorch checkpoint (or, with --to-torch, a converted '
                      'directory or a training workdir)')
  parser.add_argument('--output', required=True, help='directory to create (or, with --to-torch, a .pt / '
                      '.safetensors file)')
  parser.add_argument('--to-torch', action='store_true', help='export lgdlm_jax params to a PyTorch state dict')
  parser.add_argument('--step', type=int, help='with --to-torch from a workdir: the checkpoint step (default newest)')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), help='cast the weights (default: keep the stored dtype)')
  parser.add_argument('--unsafe-pickle', action='store_true', help='unpickle objects beyond tensors (trusted files only)')
  parser.add_argument('--allow-missing', action='store_true', help='initialise parameters the checkpoint lacks')
  parser.add_argument('--allow-unexpected', action='store_true', help='drop tensors the model does not have')
  parser.add_argument('--allow-mismatched', action='store_true',
                      help='drop tensors of the wrong shape and initialise their parameters')
  parser.add_argument('--verify', action='store_true', help='compare the PyTorch and Flax outputs (needs torch, mmdit)')
  parser.add_argument('--tolerance', type=float, default=DEFAULT_TOLERANCE, help='--verify: max abs difference allowed')
  parser.add_argument('--seed', type=int, default=0, help='seed of the --verify batch and of initialised parameters')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing output')
  group = parser.add_argument_group('model config (conversion; each checked against the tensors)')
  for key, kwargs in _MODEL_FLAGS.items():
    group.add_argument('--' + key.replace('_', '-'), dest=key, **kwargs)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.to_torch:
      _to_torch(args)
    else:
      _to_flax(args)
  except (ValueError, OSError) as e:  # ConversionError and VerificationError are ValueErrors
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def _to_flax(args: argparse.Namespace) -> None:
  checkpoint = files.read_checkpoint(args.input, args.unsafe_pickle)
  notes = [f"unwrapped '{k}'" for k in checkpoint.unwrapped] + [f"stripped prefix '{p}'" for p in checkpoint.stripped]
  print(f'read {checkpoint.path}: {len(checkpoint.state_dict)} tensors, {_count(checkpoint.state_dict):,} '
        f'parameters, {_dtypes(checkpoint.state_dict)}' + ''.join(f'; {n}' for n in notes))
  stated = {key: getattr(args, key) for key in _MODEL_FLAGS}
  inferred = layout.infer_model_config(checkpoint.state_dict, stated, checkpoint.saved_config)
  config = inferred.config
  print(f'residual layout: {layout.LAYOUT_NAMES[inferred.layout]}, R={config.num_residual_streams}')
  print('model config:')
  for key, source in inferred.sources.items():
    print(f'  {key}={config[key]} ({source})')
  state_dict = _cast(_fit(checkpoint.state_dict, config, args), args.dtype)
  params = convert.torch_to_flax(state_dict, config)
  flat = flax.traverse_util.flatten_dict(params)
  print(f'converted {len(state_dict)} tensors ({_count(state_dict):,} parameters) into {len(flat)} Flax arrays '
        f'({_count(flat):,} parameters), {_dtypes(flat)}')
  with _staged(args.output, args.overwrite) as staged:
    converted.save(staged, params, config)
    if args.verify:
      _verify(config, state_dict, converted.load_params(staged, config), args)
  print(f'wrote {args.output}: {converted.PARAMS_DIR}/ (Orbax) and {converted.CONFIG_FILE}')


def _to_torch(args: argparse.Namespace) -> None:
  if converted.is_converted(args.input):
    config = converted.load_model_config(args.input)
    params = converted.load_params(args.input, config)
    print(f'read converted params from {args.input}')
  else:
    try:
      full_config = pretrained.load_config(args.input)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'{args.input} is neither a converted directory (no {converted.PARAMS_DIR}/) nor a '
                              f'training workdir: {e}') from e
    config = full_config.model
    params, step = pretrained.load_params(args.input, full_config, args.step)
    print(f'read the params of step {step} from the training workdir {args.input}')
  state_dict = _cast(convert.flax_to_torch(params, config), args.dtype)
  with _staged(args.output, args.overwrite) as staged:
    files.write_state_dict(staged, state_dict)
    if args.verify:
      _verify(config, files.read_checkpoint(staged).state_dict, params, args)
  print(f'wrote {args.output}: {len(state_dict)} tensors, {_count(state_dict):,} parameters, {_dtypes(state_dict)}')


def _fit(state_dict: Mapping[str, np.ndarray], config: ml_collections.ConfigDict,
         args: argparse.Namespace) -> dict[str, np.ndarray]:
  """The state dict with exactly the model's tensors; what is missing, unexpected or mismatched is an
  error unless its --allow-* flag says to initialise (missing, mismatched) or drop (unexpected) it."""
  expected = convert.torch_param_shapes(config)
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected]
  mismatched = [k for k in state_dict if k in expected and tuple(np.shape(state_dict[k])) != expected[k]]
  kinds = (
      ('missing', missing, args.allow_missing, '--allow-missing initialises them',
       lambda k: f'{k} {expected[k]}'),
      ('unexpected', unexpected, args.allow_unexpected, '--allow-unexpected drops them',
       lambda k: f'{k} {tuple(np.shape(state_dict[k]))}'),
      ('mismatched', mismatched, args.allow_mismatched, '--allow-mismatched initialises them',
       lambda k: f'{k}: checkpoint {tuple(np.shape(state_dict[k]))}, model {expected[k]}'),
  )
  errors = []
  for kind, keys, allowed, remedy, describe in kinds:
    print(f'{kind}: {len(keys) or "none"}' + (f' (allowed: {remedy})' if keys and allowed else ''))
    lines = [f'  {kind} {describe(k)}' for k in keys]
    if keys and allowed:
      print('\n'.join(lines))
    elif keys:
      errors.append(f'{len(keys)} {kind} ({remedy}):\n' + '\n'.join(lines))
  if errors:
    raise convert.ConversionError('the checkpoint does not fit the model config; ' + '\n'.join(errors))
  fitted = {k: v for k, v in state_dict.items() if k in expected and k not in mismatched}
  if missing or mismatched:
    fresh = _fresh_state_dict(config, args.seed)
    dtype = np.result_type(*{v.dtype for v in fitted.values()}) if fitted else np.float32  # the checkpoint's
    fitted.update({k: fresh[k].astype(dtype) for k in missing + mismatched})
  return fitted


def _fresh_state_dict(config: ml_collections.ConfigDict, seed: int) -> dict[str, np.ndarray]:
  """The reference-named parameters of a freshly initialised lgdlm_jax model."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  latents = jnp.zeros((1, config.latent_dim), jnp.float32)
  # Compiled: running the initialising forward pass op by op is slower, even for tiny models.
  params = jax.jit(model_lib.MultimodalMMDiT(config).init)(jax.random.key(seed), tokens, latents)['params']
  return convert.flax_to_torch(params, config)


def _verify(config: ml_collections.ConfigDict, state_dict: Mapping[str, np.ndarray], params: Any,
            args: argparse.Namespace) -> None:
  try:
    from lgdlm_jax.torch_interop import twin
  except ImportError as e:
    raise ValueError(f'--verify needs torch and mmdit ({e}); pip install -r requirements-test.txt') from e
  differences = twin.max_abs_differences(config, state_dict, params, args.seed)
  print(f'verify (seeded batch, seed {args.seed}; float32, highest matmul precision; tolerance {args.tolerance:g}):')
  for name, difference in differences.items():
    print(f'  {name}: max |PyTorch - Flax| = {difference:.3g}')
  worst = max(differences, key=differences.get)
  if differences[worst] > args.tolerance:
    raise VerificationError(f'{worst} differs by {differences[worst]:.3g} > tolerance {args.tolerance:g}; '
                            'nothing was written')


def _cast(state_dict: dict[str, np.ndarray], dtype: str | None) -> dict[str, np.ndarray]:
  return state_dict if dtype is None else {k: v.astype(jnp.dtype(dtype)) for k, v in state_dict.items()}


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
  sys.exit(main())
