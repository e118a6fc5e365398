"""A reference state dict fitted to a model config, as the converter's --allow-* flags say."""

from collections.abc import Mapping
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lgdlm_jax import model as model_lib
from lgdlm_jax.convert import mapping


@dataclasses.dataclass(frozen=True)
class Allowances:
  missing: bool  # initialise parameters the checkpoint lacks
  unexpected: bool  # drop tensors the model does not have
  mismatched: bool  # drop tensors of the wrong shape and initialise their parameters


@dataclasses.dataclass(frozen=True)
class Fitted:
  state_dict: dict[str, np.ndarray]  # exactly the model's tensors
  report: list[str]  # one line per kind of problem, then one per problem the flags allowed
  changed: bool  # whether any tensor was initialised or dropped


def fit(
  state_dict: Mapping[str, np.ndarray], model_config: ml_collections.ConfigDict, allow: Allowances, seed: int
) -> Fitted:
  """The state dict with exactly the model's tensors; what is missing, unexpected or mismatched is a
  ConversionError (one line, the first few named) unless its --allow-* flag says to initialise
  (missing, mismatched; from a fresh model seeded with `seed`) or drop (unexpected) it."""
  expected = mapping.torch_param_shapes(model_config)
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected]
  mismatched = [k for k in state_dict if k in expected and tuple(np.shape(state_dict[k])) != expected[k]]
  kinds = (
    ('missing', missing, allow.missing, '--allow-missing initialises them', lambda k: f'{k} {expected[k]}'),
    (
      'unexpected',
      unexpected,
      allow.unexpected,
      '--allow-unexpected drops them',
      lambda k: f'{k} {tuple(np.shape(state_dict[k]))}',
    ),
    (
      'mismatched',
      mismatched,
      allow.mismatched,
      '--allow-mismatched initialises them',
      lambda k: f'{k}: checkpoint {tuple(np.shape(state_dict[k]))}, model {expected[k]}',
    ),
  )
  report, errors = [], []
  for kind, keys, allowed, remedy, describe in kinds:
    report.append(f'{kind}: {len(keys) or "none"}' + (f' (allowed: {remedy})' if keys and allowed else ''))
    if keys and allowed:
      report += [f'  {kind} {describe(k)}' for k in keys]
    elif keys:
      errors.append(f'{len(keys)} {kind} ({remedy}): ' + mapping.problem_list([f'{kind} {describe(k)}' for k in keys]))
  if errors:
    raise mapping.ConversionError('the checkpoint does not fit the model config; ' + '; '.join(errors))
  fitted = {k: v for k, v in state_dict.items() if k in expected and k not in mismatched}
  if missing or mismatched:
    fresh = fresh_state_dict(model_config, seed)
    dtype = np.result_type(*{v.dtype for v in fitted.values()}) if fitted else np.float32  # the checkpoint's
    fitted.update({k: fresh[k].astype(dtype) for k in missing + mismatched})
  return Fitted(fitted, report, bool(missing or unexpected or mismatched))


def fresh_state_dict(model_config: ml_collections.ConfigDict, seed: int) -> dict[str, np.ndarray]:
  """The reference-named parameters of a freshly initialised lgdlm_jax model."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  latents = jnp.zeros((1, model_config.latent_dim), jnp.float32)
  # Compiled: running the initialising forward pass op by op is slower, even for tiny models.
  params = jax.jit(model_lib.MultimodalMMDiT(model_config).init)(jax.random.key(seed), tokens, latents)['params']
  return mapping.flax_to_torch(params, model_config)
