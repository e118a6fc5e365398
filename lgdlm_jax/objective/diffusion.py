"""Latent diffusion maths of the reference's ContinuousDiffusion, as pure jit-safe functions.

The noise schedule tables are built once on the host in float64 and stored as float32 jnp arrays
inside a `DiffusionSchedule` pytree, so they can be passed through `jax.jit` like any other
argument. Timesteps are continuous, t in [0, 1], and are mapped to a table row by the reference's
rule floor(t * (T - 1)). The reference switches per batch to "discrete" timesteps when
t.max() > 1; we do not reproduce that data-dependent branch: callers holding integer indices use
`schedule_values_at_index` instead.

The parameterization (epsilon, x0, v_param) is a Python string checked at trace time.
"""

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lgdlm_jax.config import schema

BETA_SCHEDULES = schema.CHOICES['model.latent_beta_schedule']
PARAMETERIZATIONS = schema.CHOICES['model.latent_parameterization']
# The largest t the objective draws in `random` mode: the reference keeps t < 1 so that sqrt(abar)
# never reaches its smallest value (1.56e-5 at t = 1 with the cosine schedule).
MAX_RANDOM_T = 0.9999

# Improved-DDPM cosine schedule offset (Nichol & Dhariwal 2021), as in the reference.
COSINE_S = 0.008
# The cosine betas are clipped into this range so that no step is degenerate.
COSINE_BETA_MIN = 1e-4
COSINE_BETA_MAX = 0.9999


def _check_parameterization(parameterization: str) -> None:
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(f'Unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}.')


def _cosine_betas(num_timesteps: int) -> np.ndarray:
  steps_T1 = np.linspace(0.0, num_timesteps, num_timesteps + 1, dtype=np.float64)
  angle_T1 = (steps_T1 / num_timesteps + COSINE_S) / (1.0 + COSINE_S) * math.pi * 0.5
  abar_T1 = np.cos(angle_T1) ** 2
  abar_T1 = abar_T1 / abar_T1[0]
  betas_T = 1.0 - abar_T1[1:] / abar_T1[:-1]
  return np.clip(betas_T, COSINE_BETA_MIN, COSINE_BETA_MAX)


def _sigmoid_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  logits_T = np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)
  return 1.0 / (1.0 + np.exp(-logits_T)) * (beta_end - beta_start) + beta_start


def beta_schedule(name: str, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """Returns the float64 betas [T] of a named schedule, computed on the host.

  beta_start / beta_end are used by 'linear' and 'sigmoid'; 'cosine' ignores them (as the
  reference does) and clips to [1e-4, 0.9999] instead.
  """
  if name not in BETA_SCHEDULES:
    raise ValueError(f'Unknown beta schedule {name!r}; expected one of {BETA_SCHEDULES}.')
  if int(num_timesteps) != num_timesteps or num_timesteps < 1:
    raise ValueError(f'num_timesteps must be a positive integer, got {num_timesteps!r}.')
  num_timesteps = int(num_timesteps)
  if name == 'cosine':
    return _cosine_betas(num_timesteps)
  if name == 'linear':
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  return _sigmoid_betas(num_timesteps, beta_start, beta_end)


@flax.struct.dataclass
class DiffusionSchedule:
  """Precomputed per-step tables, float32 [T]; num_timesteps is static so shapes stay static."""

  betas: jax.Array
  alphas_cumprod: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  num_timesteps: int = flax.struct.field(pytree_node=False)


def make_schedule(
  name: str, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> DiffusionSchedule:
  """Builds the schedule tables in float64 on the host, then casts each to float32.

  The reference does the whole computation in float32 torch; doing it in float64 first gives
  each table entry its correctly rounded float32 value (the differences are reported in
  tests/diffusion_test.py).
  """
  betas_T = beta_schedule(name, num_timesteps, beta_start, beta_end)
  abar_T = np.cumprod(1.0 - betas_T)
  as_f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
  return DiffusionSchedule(
    betas=as_f32(betas_T),
    alphas_cumprod=as_f32(abar_T),
    sqrt_alphas_cumprod=as_f32(np.sqrt(abar_T)),
    sqrt_one_minus_alphas_cumprod=as_f32(np.sqrt(1.0 - abar_T)),
    num_timesteps=int(num_timesteps),
  )


def schedule_from_config(model_config) -> DiffusionSchedule:
  """The schedule of model.latent_beta_schedule over model.latent_timesteps steps."""
  return make_schedule(model_config.latent_beta_schedule, model_config.latent_timesteps)


def timestep_index(t: jax.Array, num_timesteps: int) -> jax.Array:
  """Continuous t -> table row: trunc(t * (T - 1)) clamped to [0, T - 1], int32.

  The product is taken in t's own dtype (float32 normally), exactly as torch's
  `(t * (T - 1)).long()`, so that values such as t = k / 999 land on the same row as in the
  reference even where float32 rounding puts t * 999 just below an integer.
  """
  t = jnp.asarray(t)
  scaled = t * (num_timesteps - 1)
  # astype truncates toward zero like torch's .long(); for t >= 0 this is floor.
  return jnp.clip(scaled.astype(jnp.int32), 0, num_timesteps - 1)


def schedule_values_at_index(schedule: DiffusionSchedule, index_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sqrt(abar), sqrt(1 - abar)) at integer rows, clamped to [0, T - 1] like the reference."""
  index_B = jnp.clip(jnp.asarray(index_B).astype(jnp.int32), 0, schedule.num_timesteps - 1)
  return (schedule.sqrt_alphas_cumprod[index_B], schedule.sqrt_one_minus_alphas_cumprod[index_B])


def schedule_values(schedule: DiffusionSchedule, t_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sqrt(abar), sqrt(1 - abar)) for continuous t in [0, 1], each shaped like t_B."""
  return schedule_values_at_index(schedule, timestep_index(t_B, schedule.num_timesteps))


def _per_sample(values_B: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-sample scalars [B] ([B,K] per segment of a packed batch, or a scalar) to broadcast
  over x's trailing axes (x [B,D] or [B,K,D])."""
  if values_B.ndim >= max(x.ndim, 2):
    raise ValueError(f'Timesteps must be a scalar, [B] or [B,K] below x {x.shape}, got shape {values_B.shape}.')
  return values_B.reshape(values_B.shape + (1,) * (x.ndim - values_B.ndim))


def _coefficients(schedule: DiffusionSchedule, t_B: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  sqrt_abar_B, sqrt_one_minus_abar_B = schedule_values(schedule, t_B)
  return _per_sample(sqrt_abar_B, x), _per_sample(sqrt_one_minus_abar_B, x)


def add_noise(
  schedule: DiffusionSchedule, x0: jax.Array, t_B: jax.Array, noise: jax.Array, parameterization: str
) -> tuple[jax.Array, jax.Array]:
  """Forward process z_t = sqrt(abar) x0 + sqrt(1 - abar) noise, and the training target.

  Target: epsilon -> noise; x0 -> x0; v_param -> sqrt(abar) noise - sqrt(1 - abar) x0.
  x0 is [B, ...] (e.g. [B, D] or [B, 1, D]); noise has x0's shape.
  """
  _check_parameterization(parameterization)
  sqrt_abar, sqrt_one_minus_abar = _coefficients(schedule, t_B, x0)
  z_t = sqrt_abar * x0 + sqrt_one_minus_abar * noise
  if parameterization == 'epsilon':
    target = noise
  elif parameterization == 'x0':
    target = x0
  else:
    target = sqrt_abar * noise - sqrt_one_minus_abar * x0
  return z_t, target


def predict_x0(
  schedule: DiffusionSchedule, z_t: jax.Array, t_B: jax.Array, model_output: jax.Array, parameterization: str
) -> jax.Array:
  """Clean-sample estimate from a model output of the given parameterization.

  For epsilon the division by sqrt(abar) amplifies errors by up to 1 / 1.56e-5 at t = 1 with
  the cosine schedule; that is inherent in the reference's formula and kept as is.
  """
  _check_parameterization(parameterization)
  if parameterization == 'x0':
    return model_output
  sqrt_abar, sqrt_one_minus_abar = _coefficients(schedule, t_B, z_t)
  if parameterization == 'epsilon':
    return (z_t - sqrt_one_minus_abar * model_output) / sqrt_abar
  return sqrt_abar * z_t - sqrt_one_minus_abar * model_output


def predict_eps(
  schedule: DiffusionSchedule, z_t: jax.Array, t_B: jax.Array, model_output: jax.Array, parameterization: str
) -> jax.Array:
  """Noise estimate from a model output of the given parameterization."""
  _check_parameterization(parameterization)
  if parameterization == 'epsilon':
    return model_output
  sqrt_abar, sqrt_one_minus_abar = _coefficients(schedule, t_B, z_t)
  if parameterization == 'x0':
    return (z_t - sqrt_abar * model_output) / sqrt_one_minus_abar
  return sqrt_abar * model_output + sqrt_one_minus_abar * z_t


def ddim_step(
  schedule: DiffusionSchedule, z_t: jax.Array, t_B: jax.Array, t_prev_B: jax.Array, eps_hat: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Deterministic (eta = 0) DDIM update from t to t_prev. Returns (x_prev, x0_hat).

  x0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t);
  x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat.
  This is the reference's eta = 0 path. Its eta > 0 branch is not reproduced: it builds sigma
  from the square roots of the tables where DDIM uses abar itself, and adds the noise without
  shrinking the direction term, so it is not DDIM's stochastic step; the objective needs eta = 0 only.
  As in the reference, t_prev = 0 reads row 0 (abar = 1 - beta_0), not abar = 1, so the last
  step returns a very slightly noised sample; x0_hat is the clean estimate.
  """
  sqrt_abar, sqrt_one_minus_abar = _coefficients(schedule, t_B, z_t)
  sqrt_abar_prev, sqrt_one_minus_abar_prev = _coefficients(schedule, t_prev_B, z_t)
  x0_hat = (z_t - sqrt_one_minus_abar * eps_hat) / sqrt_abar
  x_prev = sqrt_abar_prev * x0_hat + sqrt_one_minus_abar_prev * eps_hat
  return x_prev, x0_hat
