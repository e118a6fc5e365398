"""The research loop: cycle schedules in the log, EMA, best checkpoints, plots, profiles, and resumes
that refuse a changed config and never log a step twice."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.checkpoints import resume_check as resume
from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.errors import ConfigError
from lgdlm_jax.training import loop
from lgdlm_jax.training import metrics_log
from lgdlm_jax.training import profiling
from tests.helpers.runs import saved_steps
from tests.helpers.runs import tiny_config

RESEARCH = {
  'training.num_train_steps': 6,
  'training.eval_every': 2,
  'training.save_every': 4,
  'training.eval_batches': 1,
  'training.eval_sample_batches': 1,
  'training.eval_l2t_steps': 2,
  'training.eval_t2l_steps': 2,
  'training.print_examples': 0,
  'training.ema_decay': 0.9,
  'training.keep_checkpoints': 1,
  'training.keep_best_checkpoints': 1,
  'training.best_checkpoint_metric': 'val_loss',
  'training.profile_steps': (1, 3),
  'loss.cycle_every': 2,
}


class Killed(Exception):
  """Stands for the process dying: raised where the run would save step `at`."""


def kill_at(at):
  real_save = checkpoint.save

  def save(manager, step, *args, **kwargs):
    if step == at:
      raise Killed(step)
    real_save(manager, step, *args, **kwargs)

  return save


@pytest.mark.slow
def test_killed_run_resumes_without_duplicate_steps_and_keeps_ema_best_plot_profile(tmp_path, monkeypatch):
  # Two train-step programs (cycle_every=2: every term / base only) and the two evaluation
  # programs, compiled once: the resumed run loads them from the shared compilation cache.
  workdir = str(tmp_path / 'run')
  config = tiny_config(**RESEARCH, **{'training.compilation_cache_dir': str(tmp_path / 'cache')})
  with monkeypatch.context() as patch:
    patch.setattr(checkpoint, 'save', kill_at(6))
    with pytest.raises(Killed):
      loop.run(config, workdir)  # logs steps 5 and 6, then dies before saving 6
  assert max(r['step'] for r in metrics_log.read_log(workdir)) == 6
  assert saved_steps(workdir)[-1] == 4
  assert os.path.getsize(os.path.join(workdir, metrics_log.PLOT_FILE)) > 10_000
  traces = [f for _, _, files in os.walk(os.path.join(workdir, 'tensorboard', 'plugins', 'profile')) for f in files]
  assert any(f.endswith('.xplane.pb') for f in traces), traces

  state = loop.run(config, workdir)  # resumes from step 4
  records = metrics_log.read_log(workdir)
  train_steps = [r['step'] for r in records if 'loss' in r]
  val_steps = [r['step'] for r in records if 'val_loss' in r]
  assert train_steps == [1, 2, 3, 4, 5, 6] and val_steps == [0, 2, 4, 6]
  # cycle_every=2: the updates of steps 0, 2, 4 (logged as 1, 3, 5) run the cycle terms, the others do not.
  for record in records:
    if 'loss' in record:
      ran = record['step'] % 2 == 1
      assert ('cycle_text_loss' in record, 'cycle_latent_loss' in record, 'cycle_text_weight' in record) == (ran,) * 3
  # The newest checkpoint and the best by val_loss among the evaluated ones.
  val = {r['step']: r['val_loss'] for r in records if 'val_loss' in r and r['step'] > 0}
  assert saved_steps(workdir) == sorted({6, min(val, key=val.get)})
  # The EMA is saved, restored and moves more slowly than the parameters.
  ema = workdirs.read(workdir, workdirs.load_config(workdir).model, 6, params_tree='ema_params').params
  chex.assert_trees_all_equal(ema, jax.device_get(state.ema_params))
  assert not np.allclose(ema['latent_head_3']['kernel'], jax.device_get(state.params)['latent_head_3']['kernel'])

  changed = tiny_config(
    **RESEARCH,
    **{'training.compilation_cache_dir': str(tmp_path / 'cache'), 'model.hidden_size': 48, 'optimizer.lr': 1e-3},
  )
  with pytest.raises(ConfigError, match=r'model\.hidden_size \(32 -> 48\).*optimizer\.lr'):
    loop.run(changed, workdir)
  assert saved_steps(workdir)[-1] == 6 and len(metrics_log.read_log(workdir)) == len(records)


def write_config_json(workdir, config):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config_lib.finalize(config).to_json())


def test_resume_refuses_changed_keys_and_lets_the_listed_ones_change(tmp_path):
  workdir = str(tmp_path)
  write_config_json(workdir, tiny_config())
  resume.check_config(
    config_lib.finalize(tiny_config(**{'training.num_train_steps': 99, 'training.eval_every': 7})), workdir
  )
  for key, value in (
    ('loss.cycle_every', 3),
    ('data.val_ratio', 0.2),
    ('training.ema_decay', 0.5),
    ('training.train_batch_size', 4),
  ):
    with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
      resume.check_config(config_lib.finalize(tiny_config(**{key: value})), workdir)
  resume.check_config(
    config_lib.finalize(tiny_config(**{'loss.cycle_every': 3, 'training.allow_config_change': True})), workdir
  )


def test_a_config_json_written_before_a_key_existed_still_resumes(tmp_path):
  stored = json.loads(config_lib.finalize(tiny_config()).to_json())
  del stored['loss']['cycle_every'], stored['training']['ema_decay']  # as an older version wrote it
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  resume.check_config(config_lib.finalize(tiny_config()), str(tmp_path))
  with pytest.raises(ConfigError, match=r'loss\.cycle_every \(1 -> 2\)'):
    resume.check_config(config_lib.finalize(tiny_config(**{'loss.cycle_every': 2})), str(tmp_path))


def test_every_key_that_may_change_on_resume_is_a_config_key():
  keys = set(config_lib.flat_items(config_lib.default_config()))
  assert set(config_lib.CHANGEABLE_ON_RESUME) <= keys
  # Of the model, optimizer, objective and data keys only those that change how, not what, is computed.
  how_not_what = {
    'model.attention',
    'model.blockwise_block_size',
    'model.splash_block_size',
    'model.scan_unroll',
    'data.num_workers',
    'data.max_bad_fraction',
  }
  assert {
    k for k in config_lib.CHANGEABLE_ON_RESUME if k.startswith(('model.', 'optimizer.', 'loss.', 'data.'))
  } == how_not_what


def test_the_log_is_cut_back_to_the_restored_step(tmp_path):
  workdir = str(tmp_path)
  lines = [json.dumps({'step': s, 'loss': float(s)}) for s in range(7)] + ['{"step": 7, "lo']  # torn by a kill
  (tmp_path / metrics_log.LOG_FILE).write_text('\n'.join(lines))
  log = metrics_log.MetricsLog(workdir, config_lib.finalize(tiny_config()), resume_step=4)
  log.write(5, {'loss': 5.5})
  log.close()
  logged = [(r['step'], r['loss']) for r in metrics_log.read_log(workdir)]
  assert logged == [(s, float(s)) for s in range(5)] + [(5, 5.5)]
  metrics_log.MetricsLog(workdir, config_lib.finalize(tiny_config())).close()  # a fresh run starts an empty log
  assert metrics_log.read_log(workdir) == []


def test_the_best_and_the_newest_checkpoints_are_kept(tmp_path):
  config = config_lib.finalize(
    tiny_config(
      **{
        'training.keep_checkpoints': 2,
        'training.keep_best_checkpoints': 2,
        'training.eval_every': 1,
        'training.eval_sample_batches': 1,
        'training.best_checkpoint_metric': 'val_l2t_onepass_acc',
      }
    )
  )
  manager = checkpoint.make_manager(str(tmp_path), config)
  accuracies = {1: 0.1, 2: 0.5, 3: 0.4, 4: 0.2, 5: float('nan'), 6: None, 7: 0.3, 8: 0.1}
  for step, acc in accuracies.items():
    val = None if acc is None else {'val_l2t_onepass_acc': acc, 'val_loss': 1.0}
    checkpoint.save(manager, step, {'x': np.full(2, step, np.float32)}, None, checkpoint.ranking_metrics(val, config))
    manager.wait_until_finished()
  manager.close()
  # Best two by accuracy (higher is better; NaN and unevaluated steps never rank): 2 and 3;
  # newest two: 7 and 8.
  assert saved_steps(str(tmp_path)) == [2, 3, 7, 8]


def test_the_profiler_writes_a_trace_tensorboard_opens(tmp_path):
  config = config_lib.finalize(tiny_config(**{'training.profile_steps': (1, 3)}))
  profiler = profiling.StepProfiler(config, str(tmp_path))
  double = jax.jit(lambda x: x * 2)
  x = np.ones(4, np.float32)
  for step in range(5):
    with profiler.step(step):
      x = double(x)
    profiler.after(step, x)
  profiler.close()
  found = [os.path.relpath(os.path.join(root, f), tmp_path) for root, _, files in os.walk(tmp_path) for f in files]
  assert any(
    f.startswith(os.path.join('tensorboard', 'plugins', 'profile')) and f.endswith('.xplane.pb') for f in found
  ), found
