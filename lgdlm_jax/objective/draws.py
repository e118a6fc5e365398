"""The random inputs of the objective, drawn outside it so that a test can feed the very same noise
to the PyTorch reference.

    draws = sample_draws(rng, batch_size, latent_dim, options)
    draws = draws_for_batch(rng, batch, latent_dim, options)   # per segment [B,K] for a packed batch
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from lgdlm_jax.objective import diffusion
from lgdlm_jax.objective.options import ObjectiveOptions

# The reference keeps t < 1 in random mode so that sqrt(abar) never reaches its smallest value.
LATENT_T_MAX = diffusion.MAX_RANDOM_T


def sample_latent_t(rng: jax.Array, shape: int | tuple[int, ...], options: ObjectiveOptions) -> jax.Array:
  """Latent timesteps of `shape` ([B], or [B,K] per segment): U(cycle_latent_t_min, cycle_latent_t_max)
  clamped to <= 0.9999, or ones."""
  shape = (shape,) if isinstance(shape, int) else tuple(shape)
  if options.latent_t_mode == 'full':
    return jnp.ones(shape, jnp.float32)
  span = options.latent_t_max - options.latent_t_min
  t = options.latent_t_min + span * jax.random.uniform(rng, shape, jnp.float32)
  return jnp.minimum(t, LATENT_T_MAX)


def sample_draws(
  rng: jax.Array, batch_size: int, latent_dim: int, options: ObjectiveOptions, segments_per_row: int | None = None
) -> dict[str, jax.Array]:
  """Every random input of one cycle_vae_loss call.

  t_lat [B], noise [B,D]: the base T2L pass; t_lat2 [B], noise2 [B,D]: the cycle-latent pass
  (drawn even when that term is off, so the draws keep one structure); sample_key: categorical
  pseudo tokens; dropout_key: the model's dropout. segments_per_row K (a packed batch): one draw per
  segment, t_lat [B,K] and noise [B,K,D] (empty slots draw too; their terms are masked out).
  """
  t_key, noise_key, t2_key, noise2_key, sample_key, dropout_key = jax.random.split(rng, 6)
  shape = (batch_size,) if segments_per_row is None else (batch_size, segments_per_row)
  return dict(
    t_lat=sample_latent_t(t_key, shape, options),
    noise=jax.random.normal(noise_key, shape + (latent_dim,), jnp.float32),
    t_lat2=sample_latent_t(t2_key, shape, options),
    noise2=jax.random.normal(noise2_key, shape + (latent_dim,), jnp.float32),
    sample_key=sample_key,
    dropout_key=dropout_key,
  )


def draws_for_batch(
  rng: jax.Array, batch: Mapping[str, jax.Array], latent_dim: int, options: ObjectiveOptions
) -> dict[str, jax.Array]:
  """`sample_draws` for `batch`: per segment where it is packed (it has 'segment_ids'), else per row."""
  batch_size = batch['input_ids'].shape[0]
  segments_per_row = batch['latent'].shape[1] if 'segment_ids' in batch else None
  return sample_draws(rng, batch_size, latent_dim, options, segments_per_row)
