"""init_from: every source kind, optimizer state and step, and one-line errors before any work."""

import os

import jax
import numpy as np
import optax
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import data as data_lib
from lgdlm_jax import errors
from lgdlm_jax import main
from lgdlm_jax.checkpoints import init_from
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.convert import converted
from lgdlm_jax.convert import moments as moments_lib
from lgdlm_jax.training import loop
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step as train
from tests.helpers import runs
from tests.helpers.params import random_params


def _moments(model_config, updates: int) -> moments_lib.AdamMoments:
  mu, nu = random_params(model_config, 1), jax.tree_util.tree_map(np.abs, random_params(model_config, 2))
  return moments_lib.AdamMoments(updates, mu, nu, {})


def _converted(tmp_path, model_config, steps_done=None, moments=None, name='converted') -> str:
  directory = str(tmp_path / name)
  converted.save(directory, random_params(model_config, 0), model_config, {'steps_done': steps_done}, moments)
  return directory


def _fields(tree, name: str) -> list:
  """Every value of the optax state field `name` in an optimizer state."""
  return [value for _, value in optax.tree_utils.tree_get_all_with_path(tree, name)]


def _fresh_state(config):
  """A TrainState of numpy zeros with the run's optimizer state layout, and its shardings."""
  config = config_lib.finalize(config)
  params = jax.tree_util.tree_map(np.zeros_like, random_params(config.model, 0))
  optimizer = optimizer_lib.make_optimizer(config)
  zero = np.zeros((), np.int32)
  state = train.TrainState(
    step=zero, params=params, opt_state=optimizer.init(params), nonfinite_steps=zero, consecutive_nonfinite=zero
  )
  return state, sharding.tree_shardings(state, sharding.make_mesh(config), config.mesh.min_shard_size)


@pytest.mark.parametrize('accumulation', [1, 2])
def test_moments_and_step_go_into_the_optimizer_state(tmp_path, accumulation):
  config = runs.tiny_config(**{'training.gradient_accumulation_steps': accumulation, 'training.num_train_steps': 20})
  source_moments = _moments(config.model, updates=3)
  config.update(
    init_from=_converted(tmp_path, config.model, 3 * accumulation, source_moments), init_from_optimizer=True
  )
  initial = init_from.load(config_lib.finalize(config), str(tmp_path / 'run'))
  state, shardings = _fresh_state(config)
  state = jax.device_get(init_from.apply(initial, state, shardings))
  assert int(state.step) == 3 * accumulation
  for field, expected in (('mu', source_moments.mu), ('nu', source_moments.nu)):
    (got,) = _fields(state.opt_state, field)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, expected)
  counts = {k: int(v) for k in ('count', 'gradient_step', 'mini_step') for v in _fields(state.opt_state, k)}
  assert counts == ({'count': 3, 'gradient_step': 3, 'mini_step': 0} if accumulation > 1 else {'count': 3})
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, random_params(config.model, 0))


def test_a_training_workdir_is_a_source_with_its_optimizer_state(tmp_path):
  config = runs.tiny_config(**{'training.num_train_steps': 20})
  state, _ = _fresh_state(config)
  saved_moments = _moments(config.model, updates=5)
  saved = state.replace(
    step=np.int32(5),
    params=random_params(config.model, 4),
    opt_state=moments_lib.into_opt_state(state.opt_state, saved_moments),
  )
  source = tmp_path / 'source_run'
  manager = checkpoint.make_manager(str(source), config)
  checkpoint.save(manager, 5, saved)
  manager.wait_until_finished()
  manager.close()
  (source / 'config.json').write_text(config_lib.finalize(config).to_json())

  config.update(init_from=str(source), init_from_optimizer=True)
  weights = init_from.load(config_lib.finalize(config), str(tmp_path / 'run')).weights
  assert (weights.kind, weights.steps_done, weights.moments.updates) == ('training workdir', 5, 5)
  jax.tree_util.tree_map(np.testing.assert_array_equal, weights.params, saved.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, weights.moments.nu, saved_moments.nu)


def test_a_workdir_with_checkpoints_resumes_and_ignores_init_from(tmp_path):
  config = runs.tiny_config()
  config.init_from = str(tmp_path / 'does_not_matter')
  (tmp_path / 'run' / checkpoint.CHECKPOINTS_DIR / '4').mkdir(parents=True)
  assert init_from.load(config_lib.finalize(config), str(tmp_path / 'run')) is None


def _bad_sources(tmp_path, config):
  """(init_from, init_from_optimizer, config changes, the error's words) for each way to be wrong."""
  other = runs.tiny_config(**{'model.hidden_size': 48}).model
  truncated = tmp_path / 'truncated.pt'
  truncated.write_bytes(b'PK\x03\x04 not a whole file')
  with_moments = _converted(tmp_path, config.model, 6, _moments(config.model, 3), name='with_moments')
  return [
    (str(tmp_path / 'missing'), False, {}, 'does not exist'),
    (str(truncated), False, {}, 'not a complete PyTorch checkpoint (truncated?)'),
    (_converted(tmp_path, other, name='other'), False, {}, 'shape mismatch: got'),
    (_converted(tmp_path, config.model, name='weights_only'), True, {}, 'holds no optimizer state'),
    (
      with_moments,
      True,
      {},
      'step 6 (micro-batches) and 3 optimizer updates do not fit training.gradient_accumulation_steps=1',
    ),
    (
      with_moments,
      True,
      {'training.gradient_accumulation_steps': 2, 'training.num_train_steps': 6},
      'at step 6, and training.num_train_steps=6 leaves nothing to train',
    ),
  ]


def test_bad_init_from_is_one_line_naming_it_before_any_work(tmp_path):
  for source, with_optimizer, changes, words in _bad_sources(tmp_path, runs.tiny_config()):
    config = runs.tiny_config(**changes)
    config.update(init_from=source, init_from_optimizer=with_optimizer)
    workdir = tmp_path / 'run'
    with pytest.raises(errors.InputError) as raised:
      loop.run(config, str(workdir))
    message = str(raised.value)
    assert message.startswith(f'init_from={source}: ') and words in message, message
    assert '\n' not in message
    assert not os.path.exists(workdir)


def test_init_from_optimizer_needs_init_from():
  config = runs.tiny_config()
  config.init_from_optimizer = True
  with pytest.raises(config_lib.ConfigError, match='init_from_optimizer=True'):
    config_lib.finalize(config)


def test_main_reports_a_missing_init_from_in_one_line(tmp_path, capsys):
  code = main.main(
    ['--config', runs.SMOKE, '--workdir', str(tmp_path / 'run'), f'--config.init_from={tmp_path / "missing"}']
  )
  err = capsys.readouterr().err.strip()
  assert code == 1 and len(err.splitlines()) == 1
  assert f"init_from='{tmp_path / 'missing'}': no such file or directory" in err


def test_without_a_data_position_the_data_start_where_the_step_leaves_them():
  config = config_lib.finalize(runs.tiny_config(**{'data.synthetic_num_samples': 64, 'training.train_batch_size': 8}))
  reference, _ = data_lib.make_datasets(config)
  started, _ = data_lib.make_datasets(config)
  step = reference.steps_per_epoch + 2  # into the second epoch
  expected = [next(reference) for _ in range(step + 1)][-1]
  started.start_at_step(step)  # what the loop does after init_from with an optimizer state
  got = next(started)
  reference.close()
  started.close()
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
