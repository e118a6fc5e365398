"""Parity tests of lgdlm_jax.objective.diffusion against the reference's formulas written in torch.

The torch helpers below restate the SPEC section 2 formulas (they are not the reference's code);
torch is the arithmetic the reference runs on, so index rounding and float32 table values can be
compared bit for bit where that matters.
"""

import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import torch

from lgdlm_jax.objective import diffusion

T = 1000
# Float32 t values close to 1, where sqrt(abar) is smallest (1.56e-5 at t = 1 for cosine).
NEAR_ONE = (0.9999, float(np.nextafter(np.float32(1.0), np.float32(0.0))), 1.0)

# Measured max |ours - torch float32 reference tables| (ours: float64 then cast to float32). The
# reference builds the tables in float32, which loses precision in two places: the cosine betas
# near t = 1 (ratio of two small cos^2 values; worst 3.1e-5 at row 998, relative 4e-5) and
# sqrt(1 - abar) near t = 0 (1 - abar ~ 1e-4 has few float32 bits left; worst 4.4e-6 at row 13).
# The tolerances are those measurements rounded up; float64 formulas are held to 1e-6.
FLOAT32_REFERENCE_ATOL = {
  # name: (betas, alphas_cumprod, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod)
  'cosine': (4e-5, 5e-7, 3e-7, 5e-6),
  'linear': (1e-8, 3e-7, 3e-7, 2e-6),
  'sigmoid': (1e-8, 5e-7, 3e-7, 2e-6),
}


def _torch_betas(name, num_timesteps, beta_start, beta_end, dtype):
  """SPEC section 2 beta schedules in torch, in the given dtype throughout."""
  if name == 'linear':
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=dtype)
  if name == 'sigmoid':
    logits = torch.linspace(-6, 6, num_timesteps, dtype=dtype)
    return torch.sigmoid(logits) * (beta_end - beta_start) + beta_start
  x = torch.linspace(0, num_timesteps, num_timesteps + 1, dtype=dtype)
  abar = torch.cos(((x / num_timesteps) + 0.008) / 1.008 * math.pi * 0.5) ** 2
  abar = abar / abar[0]
  return torch.clip(1 - abar[1:] / abar[:-1], 1e-4, 0.9999)


def _torch_tables(name, dtype, num_timesteps=T, beta_start=1e-4, beta_end=0.02):
  betas = _torch_betas(name, num_timesteps, beta_start, beta_end, dtype)
  abar = torch.cumprod(1 - betas, dim=0)
  return betas, abar, torch.sqrt(abar), torch.sqrt(1 - abar)


def _torch_index(t_np, num_timesteps=T):
  """The reference's continuous rule, in float32 torch."""
  t = torch.from_numpy(np.array(t_np, np.float32))
  return (t * (num_timesteps - 1)).long().clamp(0, num_timesteps - 1).numpy()


def _torch_coefficients(name, t_np, ndim):
  """float64 sqrt(abar), sqrt(1-abar) from float64 tables at the torch float32 index."""
  _, _, sqrt_abar, sqrt_one_minus = _torch_tables(name, torch.float64)
  index = torch.from_numpy(_torch_index(t_np))
  shape = (-1,) + (1,) * (ndim - 1)
  return sqrt_abar[index].reshape(shape), sqrt_one_minus[index].reshape(shape)


def _times(rng, batch):
  """float32 t: the edges 0 and 1, values near 1, then uniform draws."""
  edges = np.array((0.0,) + NEAR_ONE, np.float32)
  return np.concatenate([edges, rng.uniform(0, 1, batch - len(edges)).astype(np.float32)])


def _t64(x):
  return torch.from_numpy(np.asarray(x, np.float64))


class ScheduleTablesTest(parameterized.TestCase):
  @parameterized.product(name=diffusion.BETA_SCHEDULES)
  def test_tables_match_float64_formulas(self, name):
    ours = diffusion.make_schedule(name)
    ours_np = (ours.betas, ours.alphas_cumprod, ours.sqrt_alphas_cumprod, ours.sqrt_one_minus_alphas_cumprod)
    for ours_T, ref_T in zip(ours_np, _torch_tables(name, torch.float64)):
      self.assertEqual(ours_T.dtype, jnp.float32)
      chex.assert_shape(ours_T, (T,))
      # Relative 1e-6 is stricter than absolute 1e-6 everywhere (all entries are <= 1).
      np.testing.assert_allclose(np.asarray(ours_T, np.float64), ref_T.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(
      diffusion.beta_schedule(name), _torch_betas(name, T, 1e-4, 0.02, torch.float64).numpy(), rtol=1e-12, atol=0
    )

  @parameterized.product(name=('linear', 'sigmoid'))
  def test_custom_beta_range(self, name):
    betas = diffusion.beta_schedule(name, 50, beta_start=1e-3, beta_end=0.05)
    ref = _torch_betas(name, 50, 1e-3, 0.05, torch.float64).numpy()
    np.testing.assert_allclose(betas, ref, rtol=1e-12, atol=0)
    self.assertEqual(betas.dtype, np.float64)

  @parameterized.product(name=diffusion.BETA_SCHEDULES)
  def test_tables_match_float32_reference(self, name):
    ours = diffusion.make_schedule(name)
    ours_np = (ours.betas, ours.alphas_cumprod, ours.sqrt_alphas_cumprod, ours.sqrt_one_minus_alphas_cumprod)
    refs = _torch_tables(name, torch.float32)
    for ours_T, ref_T, atol in zip(ours_np, refs, FLOAT32_REFERENCE_ATOL[name]):
      np.testing.assert_allclose(np.asarray(ours_T), ref_T.numpy(), rtol=0, atol=atol)

  def test_cosine_published_constants(self):
    schedule = diffusion.make_schedule('cosine')
    np.testing.assert_allclose(schedule.alphas_cumprod[T - 1], 2.43e-10, rtol=5e-3)
    np.testing.assert_allclose(schedule.sqrt_alphas_cumprod[T - 1], 1.56e-5, rtol=5e-3)
    # Every cosine beta is clipped into [1e-4, 0.9999]; the last one hits the upper clip.
    self.assertGreaterEqual(float(schedule.betas.min()), np.float32(1e-4))
    np.testing.assert_allclose(schedule.betas[T - 1], 0.9999, rtol=1e-6)

  def test_schedule_is_a_pytree_with_static_length(self):
    schedule = diffusion.make_schedule('linear', num_timesteps=10)
    self.assertLen(jax.tree_util.tree_leaves(schedule), 4)
    # Static num_timesteps: usable as a Python int inside jit (shape arithmetic).
    first_half = jax.jit(lambda s: s.betas[: s.num_timesteps // 2])(schedule)
    chex.assert_shape(first_half, (5,))
    np.testing.assert_array_equal(first_half, schedule.betas[:5])

  def test_bad_schedule_raises(self):
    with self.assertRaisesRegex(ValueError, r"'quadratic'.*cosine"):
      diffusion.beta_schedule('quadratic')
    with self.assertRaisesRegex(ValueError, 'quadratic'):
      diffusion.make_schedule('quadratic')
    with self.assertRaisesRegex(ValueError, 'num_timesteps'):
      diffusion.beta_schedule('linear', 0)


class TimestepIndexTest(chex.TestCase):
  def _edge_and_random_t(self):
    rng = np.random.default_rng(0)
    on_grid = (np.arange(T) / (T - 1)).astype(np.float32)
    return np.concatenate(
      [
        on_grid,
        np.nextafter(on_grid, np.float32(2)),
        np.nextafter(on_grid, np.float32(-1)),
        np.array([0.0, 1e-30, 1e-7, 0.9999, 1.0, 1.0001, 1.01, -1e-8, -0.01], np.float32),
        rng.uniform(0, 1, 20000).astype(np.float32),
      ]
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(T, 10)
  def test_matches_torch(self, num_timesteps):
    t = self._edge_and_random_t()
    index = self.variant(lambda t: diffusion.timestep_index(t, num_timesteps))(jnp.asarray(t))
    self.assertEqual(index.dtype, jnp.int32)
    np.testing.assert_array_equal(np.asarray(index), _torch_index(t, num_timesteps))

  def test_edge_set_separates_precision_and_rounding(self):
    # Guards the test above: these t values tell a float32 product from a float64 one, and
    # truncation from rounding, so a wrong implementation would fail it.
    t = self._edge_and_random_t()
    ref = _torch_index(t)
    float64_rule = np.clip((t.astype(np.float64) * (T - 1)).astype(np.int64), 0, T - 1)
    rounding_rule = np.clip(np.round(t.astype(np.float64) * (T - 1)), 0, T - 1)
    self.assertGreater(np.sum(ref != float64_rule), 100)
    self.assertGreater(np.sum(ref != rounding_rule), 1000)

  def test_index_accessor_matches_tables(self):
    schedule = diffusion.make_schedule('cosine')
    sqrt_abar, sqrt_one_minus = diffusion.schedule_values_at_index(schedule, jnp.array([0, 999]))
    np.testing.assert_array_equal(sqrt_abar, schedule.sqrt_alphas_cumprod[jnp.array([0, 999])])
    np.testing.assert_array_equal(sqrt_one_minus, schedule.sqrt_one_minus_alphas_cumprod[jnp.array([0, 999])])
    t = jnp.array([0.0, 1.0, 0.5])
    np.testing.assert_array_equal(
      diffusion.schedule_values(schedule, t)[0], schedule.sqrt_alphas_cumprod[_torch_index(t)]
    )


class ParameterizationTest(chex.TestCase):
  def _inputs(self, shape, seed=0):
    rng = np.random.default_rng(seed)
    t = _times(rng, shape[0])
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    return t, a, b

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
    name_and_shape=(('cosine', (16, 1, 8)), ('linear', (16, 8))), parameterization=diffusion.PARAMETERIZATIONS
  )
  def test_add_noise_matches_torch(self, name_and_shape, parameterization):
    name, shape = name_and_shape
    schedule = diffusion.make_schedule(name)
    t, x0, noise = self._inputs(shape)
    fn = self.variant(lambda s, x, t, n: diffusion.add_noise(s, x, t, n, parameterization))
    z_t, target = fn(schedule, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
    chex.assert_shape((z_t, target), shape)
    chex.assert_tree_all_finite((z_t, target))

    a, b = _torch_coefficients(name, t, len(shape))
    x0_64, noise_64 = _t64(x0), _t64(noise)
    ref_target = {'epsilon': noise_64, 'x0': x0_64, 'v_param': a * noise_64 - b * x0_64}[parameterization]
    np.testing.assert_allclose(z_t, a * x0_64 + b * noise_64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(target, ref_target, rtol=1e-6, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
    name_and_shape=(('cosine', (16, 1, 8)), ('sigmoid', (16, 8))), parameterization=diffusion.PARAMETERIZATIONS
  )
  def test_reconstructions_match_torch(self, name_and_shape, parameterization):
    name, shape = name_and_shape
    # z_t and the model output are independent draws, so no formula term can cancel by chance.
    schedule = diffusion.make_schedule(name)
    t, z_t, out = self._inputs(shape, seed=1)
    args = (schedule, jnp.asarray(z_t), jnp.asarray(t), jnp.asarray(out))
    x0_hat = self.variant(lambda s, z, t, o: diffusion.predict_x0(s, z, t, o, parameterization))(*args)
    eps_hat = self.variant(lambda s, z, t, o: diffusion.predict_eps(s, z, t, o, parameterization))(*args)
    chex.assert_shape((x0_hat, eps_hat), shape)
    chex.assert_tree_all_finite((x0_hat, eps_hat))

    a, b = _torch_coefficients(name, t, len(shape))
    z_64, out_64 = _t64(z_t), _t64(out)
    ref_x0, ref_eps = {
      'epsilon': ((z_64 - b * out_64) / a, out_64),
      'x0': (out_64, (z_64 - a * out_64) / b),
      'v_param': (a * z_64 - b * out_64, a * out_64 + b * z_64),
    }[parameterization]
    # Relative tolerance matters for epsilon -> x0 at t = 1, where 1/sqrt(abar) = 6.4e4.
    np.testing.assert_allclose(x0_hat, ref_x0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(eps_hat, ref_eps, rtol=1e-6, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=diffusion.BETA_SCHEDULES, parameterization=diffusion.PARAMETERIZATIONS)
  def test_round_trip(self, name, parameterization):
    schedule = diffusion.make_schedule(name)
    rng = np.random.default_rng(2)
    x0 = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
    noise = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)

    @self.variant
    def round_trip(s, x0, t, noise):
      z_t, target = diffusion.add_noise(s, x0, t, noise, parameterization)
      return (
        diffusion.predict_x0(s, z_t, t, target, parameterization),
        diffusion.predict_eps(s, z_t, t, target, parameterization),
      )

    # Tight check away from t = 1.
    t_mid = jnp.asarray(np.concatenate([[0.0, 0.9], rng.uniform(0, 0.9, 62)]), jnp.float32)
    x0_hat, eps_hat = round_trip(schedule, x0, t_mid, noise)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-5, rtol=0)
    np.testing.assert_allclose(eps_hat, noise, atol=2e-5, rtol=0)

    # Near t = 1 the epsilon inverse divides by sqrt(abar) (1.56e-5 for cosine): the error may
    # grow like float32 rounding of z_t over sqrt(abar), per sample, but no more (measured worst:
    # 1.1e-7 / sqrt(abar)).
    t_end = jnp.asarray(np.concatenate([NEAR_ONE, rng.uniform(0.99, 1, 61)]), jnp.float32)
    x0_hat, eps_hat = round_trip(schedule, x0, t_end, noise)
    sqrt_abar, _ = diffusion.schedule_values(schedule, t_end)
    x0_err_B = jnp.max(jnp.abs(x0_hat - x0), axis=-1)
    bound_B = 4e-7 * (1 + 1 / sqrt_abar)
    self.assertTrue(bool(jnp.all(x0_err_B <= bound_B)), f'{x0_err_B / bound_B}')
    np.testing.assert_allclose(eps_hat, noise, atol=2e-5, rtol=0)

  def test_bad_parameterization_raises(self):
    schedule = diffusion.make_schedule('cosine')
    x = jnp.zeros((2, 3))
    t = jnp.zeros((2,))
    for fn in (diffusion.add_noise, diffusion.predict_x0, diffusion.predict_eps):
      with self.assertRaisesRegex(ValueError, r"'score'.*epsilon"):
        fn(schedule, x, t, x, 'score')
      with self.assertRaisesRegex(ValueError, 'score'):
        jax.jit(lambda s, x, t: fn(s, x, t, x, 'score'))(schedule, x, t)  # noqa: B023 (called at once)


class DdimTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_torch_formula(self):
    rng = np.random.default_rng(3)
    schedule = diffusion.make_schedule('cosine')
    t = _times(rng, 16)
    t_prev = np.clip(t - rng.uniform(0, 0.2, 16), 0, 1).astype(np.float32)
    z_t, eps_hat = (rng.standard_normal((16, 1, 8)).astype(np.float32) for _ in range(2))
    x_prev, x0_hat = self.variant(diffusion.ddim_step)(
      schedule, jnp.asarray(z_t), jnp.asarray(t), jnp.asarray(t_prev), jnp.asarray(eps_hat)
    )
    chex.assert_shape((x_prev, x0_hat), (16, 1, 8))
    chex.assert_tree_all_finite((x_prev, x0_hat))

    a, b = _torch_coefficients('cosine', t, 3)
    a_prev, b_prev = _torch_coefficients('cosine', t_prev, 3)
    ref_x0 = (_t64(z_t) - b * _t64(eps_hat)) / a
    ref_prev = a_prev * ref_x0 + b_prev * _t64(eps_hat)
    np.testing.assert_allclose(x0_hat, ref_x0, rtol=1e-6, atol=1e-6)
    # x_prev adds two terms that can cancel after the 1/sqrt(abar) amplification; compare at the
    # scale of the larger term.
    scale = np.maximum(np.abs(a_prev * ref_x0).numpy(), 1.0)
    np.testing.assert_allclose(x_prev / scale, ref_prev.numpy() / scale, rtol=0, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_true_noise_follows_forward_trajectory(self):
    # With eps_hat equal to the noise that made z_t, each deterministic step must land on the
    # forward-process sample at t_prev (same x0, same noise), and x0_hat must equal x0.
    rng = np.random.default_rng(4)
    schedule = diffusion.make_schedule('cosine')
    x0 = jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)
    noise = jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)
    step = self.variant(diffusion.ddim_step)
    ts = np.linspace(0.9, 0.0, 21).astype(np.float32)
    z_t, _ = diffusion.add_noise(schedule, x0, jnp.full((8,), ts[0]), noise, 'epsilon')
    for t, t_prev in zip(ts[:-1], ts[1:]):
      z_t, x0_hat = step(schedule, z_t, jnp.full((8,), t), jnp.full((8,), t_prev), noise)
      expected, _ = diffusion.add_noise(schedule, x0, jnp.full((8,), t_prev), noise, 'epsilon')
      np.testing.assert_allclose(x0_hat, x0, atol=2e-5, rtol=0)
      np.testing.assert_allclose(z_t, expected, atol=2e-5, rtol=0)
    # t_prev = 0 reads row 0 (abar = 1 - 1e-4), as in the reference: close to, not equal to, x0.
    np.testing.assert_allclose(z_t, 0.99995 * x0 + 0.01 * noise, atol=1e-5, rtol=0)


if __name__ == '__main__':
  absltest.main()
