"""The training step and loop: non-finite steps skipped, exact resume, 1 device == 8 devices."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgdlm_jax import errors
from lgdlm_jax import model as model_lib
from lgdlm_jax.convert import converted
from lgdlm_jax.training import loop
from lgdlm_jax.training import metrics_log
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step as train
from tests.helpers.runs import REPO
from tests.helpers.runs import SMOKE
from tests.helpers.runs import TINY_OVERRIDES
from tests.helpers.runs import losses_of
from tests.helpers.runs import tiny_config


def configured_step(config, model, optimizer, mesh, shardings):
  """The train step that computes every term with a base weight above 0."""
  programs, *_ = train.compile_steps(config, model, optimizer, mesh, shardings)
  return programs.for_terms(programs.schedule.configured_terms())


class TrainStepTest(chex.TestCase):
  def _setup(self, **overrides):
    config = tiny_config(**overrides)
    model = model_lib.MultimodalMMDiT(config.model)
    optimizer = optimizer_lib.make_optimizer(config)
    mesh = sharding.make_mesh(config)
    state, shardings = train.create_sharded_state(config, model, optimizer, mesh, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {
      'input_ids': jnp.asarray(rng.integers(0, 97, (8, 12)), jnp.int32),
      'attention_mask': jnp.ones((8, 12), bool),
      'latent': jnp.asarray(rng.standard_normal((8, 8)), jnp.float32),
    }
    return config, model, optimizer, mesh, state, shardings, batch

  def test_finite_step_updates_and_nonfinite_step_is_skipped(self):
    config, model, optimizer, mesh, state, shardings, batch = self._setup(**{'training.ema_decay': 0.75})
    step_fn = configured_step(config, model, optimizer, mesh, shardings)
    before = jax.device_get(state)
    chex.assert_trees_all_equal(before.ema_params, before.params)  # the EMA starts at the initial parameters
    state, metrics = step_fn(state, batch, jax.random.key(1))
    self.assertTrue(bool(metrics['step_was_finite']))
    chex.assert_trees_all_equal_shapes(before.params, state.params)
    moved = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), before.params, jax.device_get(state.params))
    )
    self.assertGreater(max(moved), 0.0)
    # ema = decay * ema + (1 - decay) * params after the update.
    expected_ema = jax.tree_util.tree_map(
      lambda e, p: 0.75 * e + 0.25 * p, before.ema_params, jax.device_get(state.params)
    )
    chex.assert_trees_all_close(jax.device_get(state.ema_params), expected_ema, rtol=1e-6, atol=1e-7)

    good = jax.device_get(state)
    bad_batch = dict(batch, latent=batch['latent'].at[0, 0].set(jnp.nan))
    state, metrics = step_fn(state, bad_batch, jax.random.key(1))
    self.assertFalse(bool(metrics['step_was_finite']))
    self.assertEqual(int(state.nonfinite_steps), 1)
    self.assertEqual(int(state.consecutive_nonfinite), 1)
    self.assertEqual(int(state.step), 2)  # the data moved on, so the step counter does too
    chex.assert_trees_all_equal(jax.device_get(state.params), good.params)
    chex.assert_trees_all_equal(jax.device_get(state.opt_state), good.opt_state)
    chex.assert_trees_all_equal(jax.device_get(state.ema_params), good.ema_params)  # no update, no EMA step

    state, _ = step_fn(state, batch, jax.random.key(1))
    self.assertEqual(int(state.consecutive_nonfinite), 0)
    self.assertEqual(int(state.nonfinite_steps), 1)

  def test_check_finite_names_the_bad_input(self):
    config, model, optimizer, mesh, state, shardings, batch = self._setup()
    config.debug.check_finite = True
    step_fn = configured_step(config, model, optimizer, mesh, shardings)
    bad_batch = dict(batch, latent=batch['latent'].at[0, 0].set(jnp.inf))
    with pytest.raises(AssertionError, match='non-finite batch.latent'):
      step_fn(state, bad_batch, jax.random.key(1))


@pytest.mark.slow
def test_run_stops_after_consecutive_nonfinite_steps(tmp_path):
  # An enormous learning rate drives the parameters to inf within a few steps.
  config = tiny_config(
    **{
      'training.num_train_steps': 30,
      'training.max_consecutive_nonfinite': 2,
      'optimizer.lr': 1e30,
      'optimizer.grad_clip_norm': 0.0,
      'training.save_every': 0,
    }
  )
  with pytest.raises(loop.NonFiniteError, match='2 consecutive steps'):
    loop.run(config, str(tmp_path))
  records = metrics_log.read_log(str(tmp_path))
  assert records[-1]['consecutive_nonfinite'] == 2
  assert not np.isfinite(records[-1]['loss']) or not np.isfinite(records[-1]['grad_norm'])


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(tmp_path):
  steps = {'training.num_train_steps': 6, 'training.save_every': 3}
  full = tmp_path / 'full'
  loop.run(tiny_config(**steps), str(full))
  interrupted = tmp_path / 'interrupted'
  loop.run(tiny_config(**{**steps, 'training.num_train_steps': 3}), str(interrupted))
  loop.run(tiny_config(**steps), str(interrupted))  # resumes from the step-3 checkpoint
  expected, got = losses_of(full), losses_of(interrupted)
  assert sorted(got) == list(range(1, 7))
  assert got == expected  # bit-for-bit on CPU
  assert expected[6] < expected[1]


def _run_main(workdir, device_count, fsdp):
  overrides = {
    **TINY_OVERRIDES,
    'training.num_train_steps': 4,
    'training.save_every': 0,
    'mesh.fsdp': fsdp,
    'mesh.min_shard_size': 1,  # shard every parameter the fsdp size divides
    'model.num_residual_streams': 2,
  }
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={device_count}', JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-m', 'lgdlm_jax.main', f'--config={SMOKE}', f'--workdir={workdir}']
  cmd += [f'--config.{k}={v}' for k, v in overrides.items()]
  subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
  return losses_of(workdir)


@pytest.mark.slow
def test_eight_devices_with_fsdp_match_one_device(tmp_path):
  one = _run_main(tmp_path / 'one', 1, 1)
  eight = _run_main(tmp_path / 'eight', 8, 2)
  assert sorted(one) == [1, 2, 3, 4]
  np.testing.assert_allclose([eight[s] for s in sorted(one)], [one[s] for s in sorted(one)], rtol=0, atol=1e-5)


def test_init_from_starts_from_converted_params_and_checks_them(tmp_path):
  config = tiny_config(**{'training.num_train_steps': 0})
  model = model_lib.MultimodalMMDiT(config.model)
  tokens, latents = jnp.zeros((1, 12), jnp.int32), jnp.zeros((1, 8))
  params = model.init(jax.random.key(123), tokens, latents)['params']
  converted.save(str(tmp_path / 'converted'), params, config.model)
  config.init_from = str(tmp_path / 'converted')
  state = loop.run(config, str(tmp_path / 'run'))
  chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(params))

  wrong = tiny_config(**{'training.num_train_steps': 0, 'model.hidden_size': 48})
  wrong.init_from = config.init_from
  with pytest.raises(errors.InputError, match='init_from=.*: .*shape mismatch'):
    loop.run(wrong, str(tmp_path / 'wrong'))
