"""The parameters' moving average: its update rule, which micro-batches move it, its checkpoint, and
which parameters evaluation and the samplers read."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax import sample
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.training import ema
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step as train
from tests.helpers.runs import tiny_config


def test_update_moves_towards_the_params_only_when_applied():
  old, new = {'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([3.0, 6.0])}
  chex.assert_trees_all_close(ema.update(old, new, 0.75, jnp.array(True)), {'w': jnp.array([1.5, 3.0])})
  chex.assert_trees_all_equal(ema.update(old, new, 0.75, jnp.array(False)), old)
  assert ema.update(None, new, 0.75, jnp.array(True)) is None


def test_under_gradient_accumulation_only_the_applying_micro_batch_counts():
  optimizer = optax.MultiSteps(optax.sgd(1.0), every_k_schedule=3).gradient_transformation()
  params = {'w': jnp.zeros(2)}
  state = optimizer.init(params)
  applied = []
  for _ in range(6):
    _, new_state = optimizer.update({'w': jnp.ones(2)}, state, params)
    applied.append(bool(ema.update_was_applied(state, new_state)))
    state = new_state
  assert applied == [False, False, True] * 2
  assert ema.update_was_applied(optax.adam(1e-3).init(params), optax.adam(1e-3).init(params)) is True


@pytest.fixture(scope='module')
def ema_workdir(tmp_path_factory):
  """A workdir with config.json and a step-3 checkpoint whose EMA differs from its parameters."""
  workdir = str(tmp_path_factory.mktemp('ema') / 'run')
  config = config_lib.finalize(tiny_config(**{'training.ema_decay': 0.99}))
  model = model_lib.MultimodalMMDiT(config.model)
  optimizer = optimizer_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config)
  state, shardings = train.create_sharded_state(config, model, optimizer, mesh, jax.random.key(0))
  state = state.replace(ema_params=jax.tree_util.tree_map(lambda p: p + 1.0, state.params))
  manager = checkpoint.make_manager(workdir, config)
  checkpoint.save(manager, 3, state)
  manager.wait_until_finished()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json())
  return workdir, config, state, shardings, manager


def test_the_ema_is_saved_and_restored_with_the_state(ema_workdir):
  workdir, config, state, shardings, manager = ema_workdir
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_with_shardings(state, shardings))
  chex.assert_trees_all_equal(jax.device_get(restored.ema_params), jax.device_get(state.ema_params))
  chex.assert_trees_all_equal(ema.evaluation_params(restored, config), restored.ema_params)
  raw = config_lib.finalize(tiny_config())
  chex.assert_trees_all_equal(ema.evaluation_params(restored, raw), restored.params)


def test_the_samplers_read_the_ema_or_the_raw_parameters(ema_workdir):
  workdir, config, state, _, _ = ema_workdir
  averaged = workdirs.read(workdir, config.model, params_tree='ema_params').params
  raw = workdirs.read(workdir, config.model).params
  chex.assert_trees_all_equal(averaged, jax.device_get(state.ema_params))
  chex.assert_trees_all_equal(raw, jax.device_get(state.params))
  assert not np.allclose(averaged['text_head']['kernel'], raw['text_head']['kernel'])


def test_asking_for_an_ema_the_run_did_not_keep_is_an_error(tmp_path, capsys):
  workdir = tmp_path / 'run'
  (workdir / checkpoint.CHECKPOINTS_DIR).mkdir(parents=True)
  (workdir / 'config.json').write_text(config_lib.finalize(tiny_config()).to_json())
  np.save(tmp_path / 'latent.npy', np.zeros(8, np.float32))
  code = sample.main(
    [
      'l2t',
      '--workdir',
      str(workdir),
      '--latents',
      str(tmp_path / 'latent.npy'),
      '--out',
      str(tmp_path / 'out'),
      '--params',
      'ema',
    ]
  )
  assert code == 2
  assert '--params=ema' in capsys.readouterr().err
