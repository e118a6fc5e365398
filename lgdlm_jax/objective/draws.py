"""The random inputs of the objective, drawn outside it so that a test can feed the very same noise
to the PyTorch reference.

    draws = sample_draws(rng, batch_size, latent_dim, options)
"""

import jax
import jax.numpy as jnp

from lgdlm_jax.objective import diffusion
from lgdlm_jax.objective.options import ObjectiveOptions

# The reference keeps t < 1 in random mode so that sqrt(abar) never reaches its smallest value.
LATENT_T_MAX = diffusion.MAX_RANDOM_T


def sample_latent_t(rng: jax.Array, batch_size: int, options: ObjectiveOptions) -> jax.Array:
  """Latent timesteps t_B: U(cycle_latent_t_min, cycle_latent_t_max) clamped to <= 0.9999, or ones."""
  if options.latent_t_mode == 'full':
    return jnp.ones((batch_size,), jnp.float32)
  span = options.latent_t_max - options.latent_t_min
  t_B = options.latent_t_min + span * jax.random.uniform(rng, (batch_size,), jnp.float32)
  return jnp.minimum(t_B, LATENT_T_MAX)


def sample_draws(rng: jax.Array, batch_size: int, latent_dim: int, options: ObjectiveOptions) -> dict[str, jax.Array]:
  """Every random input of one cycle_vae_loss call.

  t_lat [B], noise [B,D]: the base T2L pass; t_lat2 [B], noise2 [B,D]: the cycle-latent pass
  (drawn even when that term is off, so the draws keep one structure); sample_key: categorical
  pseudo tokens; dropout_key: the model's dropout.
  """
  t_key, noise_key, t2_key, noise2_key, sample_key, dropout_key = jax.random.split(rng, 6)
  return dict(
    t_lat=sample_latent_t(t_key, batch_size, options),
    noise=jax.random.normal(noise_key, (batch_size, latent_dim), jnp.float32),
    t_lat2=sample_latent_t(t2_key, batch_size, options),
    noise2=jax.random.normal(noise2_key, (batch_size, latent_dim), jnp.float32),
    sample_key=sample_key,
    dropout_key=dropout_key,
  )
