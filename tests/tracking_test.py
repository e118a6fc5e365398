"""Tracking: W&B (offline, disabled, missing, resumed), per-block norms, the time breakdown."""

import json
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax.config import reference_yaml
from lgdlm_jax.errors import ConfigError
from lgdlm_jax.training import block_norms
from lgdlm_jax.training import loop
from lgdlm_jax.training import metrics_log
from lgdlm_jax.training import timing
from lgdlm_jax.training import tracking
from tests.helpers import wandb_records
from tests.helpers.runs import tiny_config

# Named phases: the breakdown's 'other' is what the phases leave out of the wall time.
NAMED = [p for p in timing.PHASES if p != 'other']


def _offline(monkeypatch, tmp_path):
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_DIR', str(tmp_path))
  monkeypatch.setenv('WANDB_SILENT', 'true')


@pytest.fixture(scope='module')
def tracked_run(tmp_path_factory):
  """A 3-step tiny run of 2 blocks with W&B offline, per-block norms, two evaluations and a checkpoint."""
  root = tmp_path_factory.mktemp('tracked')
  with pytest.MonkeyPatch.context() as monkeypatch:
    _offline(monkeypatch, root)
    config = tiny_config(
      **{
        'model.n_blocks': 2,
        'loss.cycle_latent_weight': 0.0,  # one cycle term fewer to compile
        'training.num_train_steps': 3,
        'training.log_every': 1,
        'training.eval_every': 3,
        'training.eval_batches': 1,
        'training.eval_sample_batches': 0,
        'training.print_examples': 0,
        'logging.wandb_project': 'lgdlm-test',
        'logging.wandb_mode': 'offline',
        'logging.block_norms': True,
      }
    )
    workdir = str(root / 'run')
    loop.run(config, workdir)
  return workdir, str(root)


@pytest.mark.slow  # the tracked run: a train step and an evaluation compiled
def test_offline_wandb_gets_every_jsonl_metric_and_the_config(tracked_run):
  workdir, wandb_dir = tracked_run
  records = metrics_log.read_log(workdir)
  run = wandb_records.read_run(wandb_dir)
  for record in records:
    missing = set(record) - {'step'} - set(run['history'][record['step']])
    assert not missing, f'step {record["step"]}: not in W&B: {sorted(missing)}'
  logged = {key for record in records for key in record}
  assert {'loss', 'val_loss', 'grad_norm/block_01', 'time/step', 'time_total/wall'} <= logged
  assert {'model', 'training', 'logging'} <= run['config']
  with open(os.path.join(workdir, tracking.RUN_ID_FILE)) as f:
    assert f.read().strip() == run['run_id']


@pytest.mark.slow
def test_block_norms_in_the_step_combine_to_its_grad_norm(tracked_run):
  workdir, _ = tracked_run
  train = [r for r in metrics_log.read_log(workdir) if 'loss' in r and 'grad_norm/block_00' in r]
  assert len(train) == 3
  for record in train:
    groups = {k.split('/')[1] for k in record if k.startswith('grad_norm/')}
    assert {'block_00', 'block_01', 'text_head', 'text_encoder', 'conditioning', 'mmdit_norms'} <= groups
    assert groups == {k.split('/')[1] for k in record if k.startswith('update_norm/')}
    combined = math.sqrt(sum(record[f'grad_norm/{g}'] ** 2 for g in groups))
    np.testing.assert_allclose(combined, record['grad_norm'], rtol=1e-5)


@pytest.mark.slow
def test_time_breakdown_adds_up_to_the_wall_time(tracked_run):
  workdir, _ = tracked_run
  records = metrics_log.read_log(workdir)
  [summary] = [r for r in records if 'time_total/wall' in r]
  wall = summary['time_total/wall']
  named = sum(summary[f'time_total/{p}'] for p in NAMED)
  assert abs(wall - named) <= 0.05 * wall, {p: summary[f'time_total/{p}'] for p in timing.PHASES}
  assert min(summary[f'time_total/{p}'] for p in timing.PHASES) >= 0
  for phase in ('compile', 'step', 'eval', 'checkpoint', 'data_wait', 'log'):
    assert summary[f'time_total/{phase}'] > 0, phase
  intervals = [r for r in records if 'time/wall' in r]
  assert len(intervals) == 3
  for record in intervals:
    np.testing.assert_allclose(sum(record[f'time/{p}'] for p in timing.PHASES), record['time/wall'], rtol=1e-6)
  assert sum(r['time/wall'] for r in intervals) <= wall


def test_phase_clock_takes_compiles_out_of_the_phase_they_happen_in():
  clock = timing.PhaseClock()
  with clock.compiles():
    with clock.phase('step'):
      with clock.phase('log'):
        pass
      jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.25)(jnp.arange(7.0)).block_until_ready()
    clock.settle('other')
  totals = clock.totals()
  assert totals['time_total/compile'] > 0
  assert min(totals.values()) >= 0
  np.testing.assert_allclose(sum(totals[f'time_total/{p}'] for p in timing.PHASES), totals['time_total/wall'])
  assert timing.summary_line(totals).startswith('Time: ')


def test_group_norms_by_hand():
  blocks = {'attn': {'kernel': np.arange(24.0).reshape(3, 2, 4)}, 'ff': {'bias': np.ones((3, 5))}}
  params = {
    'mmdit': {'blocks': blocks, 'norms_0': {'g': np.full((4,), 2.0)}, 'norms_1': {'g': np.ones(4)}},
    'latent_head_0': {'kernel': np.full((2, 2), 3.0)},
    'latent_head_3': {'bias': np.ones(2)},
    'text_head': {'kernel': -np.ones((3, 3))},
  }
  norms = jax.device_get(jax.jit(block_norms.group_norms)(params))  # one compile, not one per eager op
  assert set(norms) == {'block_00', 'block_01', 'block_02', 'mmdit_norms', 'latent_head', 'text_head'}
  kernel = blocks['attn']['kernel']
  for i in range(3):
    np.testing.assert_allclose(norms[f'block_{i:02d}'], math.sqrt(np.sum(kernel[i] ** 2) + 5), rtol=1e-6)
  np.testing.assert_allclose(norms['mmdit_norms'], math.sqrt(16 + 4), rtol=1e-6)
  np.testing.assert_allclose(norms['latent_head'], math.sqrt(36 + 2), rtol=1e-6)
  np.testing.assert_allclose(norms['text_head'], 3.0, rtol=1e-6)
  global_norm = math.sqrt(sum(np.sum(leaf**2) for leaf in jax.tree.leaves(params)))
  np.testing.assert_allclose(math.sqrt(sum(float(v) ** 2 for v in norms.values())), global_norm, rtol=1e-6)
  metrics = jax.eval_shape(block_norms.norm_metrics, params, params, params)
  assert {'grad_norm/block_02', 'param_norm/text_head', 'update_norm/latent_head'} <= set(metrics)


def _wandb_config(project='lgdlm-test', mode='offline'):
  return config_lib.finalize(tiny_config(**{'logging.wandb_project': project, 'logging.wandb_mode': mode}))


def test_disabled_or_no_project_needs_no_package(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # `import wandb` raises ImportError
  for config in (_wandb_config(mode='disabled'), _wandb_config(project='', mode='online')):
    tracking.check(config)
    log = metrics_log.MetricsLog(str(tmp_path / config.logging.wandb_mode), config)
    log.write(1, {'loss': 1.0})
    log.close()
  assert not os.path.exists(tmp_path / 'disabled' / 'wandb')


def test_only_process_0_writes_logs(tmp_path, monkeypatch):
  _offline(monkeypatch, tmp_path)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  log = metrics_log.MetricsLog(str(tmp_path / 'run'), _wandb_config())
  log.write(1, {'loss': 1.0})
  log.close()
  assert not os.path.exists(tmp_path / 'run') and not os.path.exists(tmp_path / 'wandb')


def test_a_project_without_the_package_stops_before_any_work(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)
  with pytest.raises(ConfigError, match=r"logging\.wandb_project='lgdlm-test' needs the wandb package.*tracking"):
    loop.run(_wandb_config(), str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_bad_logging_values_are_one_line_errors():
  with pytest.raises(
    ConfigError, match=r"^logging\.wandb_mode='sometimes': expected one of online, offline, disabled$"
  ):
    _wandb_config(mode='sometimes')
  with pytest.raises(ConfigError, match=r"^logging\.wandb_entity='me' needs logging\.wandb_project"):
    config_lib.finalize(tiny_config(**{'logging.wandb_entity': 'me'}))
  with pytest.raises(ConfigError, match=r"^logging\.wandb_mode='offline' needs logging\.wandb_project"):
    _wandb_config(project='', mode='offline')


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
  _offline(monkeypatch, tmp_path)
  config = _wandb_config()
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  ids = []
  for resumed, step in ((False, 1), (True, 2)):
    sink = tracking.wandb_sink(workdir, config, resumed=resumed)
    sink.write(step, {'loss': float(step)})
    sink.close()
    with open(os.path.join(workdir, tracking.RUN_ID_FILE)) as f:
      ids.append(f.read().strip())
  assert ids[0] == ids[1]
  runs = [r for r in os.listdir(tmp_path / 'wandb') if r.startswith('offline-run-')]
  # wandb adds -1, -2, ... to a run directory whose name (time to the second, id) already exists.
  assert runs and all(re.fullmatch(rf'offline-run-\d{{8}}_\d{{6}}-{ids[0]}(-\d+)?', r) for r in runs)
  run_id = ids[0]
  tracking.wandb_sink(workdir, config, resumed=False).close()  # a fresh run in the same workdir: a new W&B run
  with open(os.path.join(workdir, tracking.RUN_ID_FILE)) as f:
    assert f.read().strip() != run_id


def test_the_reference_yaml_names_the_wandb_project(tmp_path):
  path = tmp_path / 'config.yaml'
  path.write_text('logging:\n  wandb_project: cycle-vae\n  log_every: 5\n')
  config, _ = reference_yaml.read_reference_yaml(path)
  assert (config.logging.wandb_project, config.training.log_every) == ('cycle-vae', 5)
  assert json.loads(config.to_json())['logging']['wandb_mode'] == 'online'
