"""Migration both ways with the reference's own layouts, as its code writes and loads them
(restated in lgdlm_jax/reference/checkpoints.py): run directories, latentDLM's pickled TrainingState,
AdamW state and step, and exports that its --resume and its samplers load strictly."""

import json
import os
import sys

import jax
import numpy as np
import pytest
import safetensors.torch
import torch

import convert_torch_weights
from lgdlm_jax import main
from lgdlm_jax.checkpoints import weight_sources as sources
from lgdlm_jax.config import reference_yaml
from lgdlm_jax.convert import converted
from lgdlm_jax.convert import exporters
from lgdlm_jax.reference import checkpoints as reference_checkpoints
from lgdlm_jax.reference import lr as reference_lr
from lgdlm_jax.reference import model as reference_model
from lgdlm_jax.training import loop
from lgdlm_jax.training import metrics_log
from tests.helpers import models
from tests.helpers import runs


def _trained(model_config, seed: int = 0, updates: int = 2):
  """A reference trainer and its AdamW after `updates` steps on made-up gradients (so that every
  parameter has moments and a step count, as after real training)."""
  torch_model, _ = models.build_pair(model_config, seed=seed)
  trainer = reference_checkpoints.CycleTrainer(torch_model)
  adamw = torch.optim.AdamW(trainer.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
  generator = torch.Generator().manual_seed(seed)
  for _ in range(updates):
    for p in trainer.parameters():
      p.grad = torch.randn(p.shape, generator=generator)
    adamw.step()
  return trainer, adamw


def _convert(capsys, *argv) -> str:
  code = convert_torch_weights.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  assert code == 0, err
  return out


def _converted_cycle_run(tmp_path, capsys, model_config, *, seed: int, updates: int, step: int, **cfg_extra):
  """A reference trainer after `updates` updates, saved as the cycle trainer's run directory at `step`
  (tmp_path/run) and converted (tmp_path/converted); returns the trainer and its AdamW."""
  trainer, adamw = _trained(model_config, seed=seed, updates=updates)
  reference_checkpoints.save_cycle_run(
    tmp_path / 'run', trainer, adamw, step, reference_checkpoints.cycle_cfg(model_config, **cfg_extra)
  )
  _convert(capsys, '--input', tmp_path / 'run', '--output', tmp_path / 'converted')
  return trainer, adamw


def _assert_same_weights(state_dict, torch_model) -> None:
  expected = torch_model.state_dict()
  assert list(state_dict) == list(expected)  # the reference's order, too
  for key, value in expected.items():
    np.testing.assert_array_equal(np.asarray(state_dict[key]), value.numpy(), err_msg=key)


def test_cycle_run_directory_newest_or_step(tmp_path, capsys):
  model_config = models.tiny_config()
  run = tmp_path / 'run'
  trainer, adamw = _trained(model_config, seed=1)
  reference_checkpoints.save_cycle_run(run, trainer, adamw, 2, reference_checkpoints.cycle_cfg(model_config))
  step_2 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
  models.perturb_(trainer.model, seed=9)
  reference_checkpoints.save_cycle_run(run, trainer, adamw, 4, reference_checkpoints.cycle_cfg(model_config))

  out = _convert(capsys, '--input', run, '--output', tmp_path / 'newest')
  assert 'latest.pt' in out and '4 micro-batches' not in out and 'step: 5 micro-batches done' in out
  newest = sources.read(str(tmp_path / 'newest'))
  assert newest.steps_done == 5
  np.testing.assert_array_equal(newest.params['text_head']['bias'], trainer.model.text_head.bias.detach().numpy())

  _convert(capsys, '--input', run / 'checkpoints', '--output', tmp_path / 'older', '--step', 2)
  older = sources.read(str(tmp_path / 'older'))
  assert older.steps_done == 3
  np.testing.assert_array_equal(older.params['text_head']['bias'], step_2['text_head.bias'].numpy())

  code = convert_torch_weights.main(['--input', str(run), '--output', str(tmp_path / 'x'), '--step', '3'])
  assert code == 1 and 'has no step_3.pt; it has steps [2, 4]' in capsys.readouterr().err


def test_latentdlm_checkpoint_converts_without_its_code_or_unsafe_pickle(tmp_path, capsys):
  model_config = models.tiny_config(num_residual_streams=1)
  trainer, adamw = _trained(model_config, seed=2, updates=3)
  reference_checkpoints.save_latentdlm_checkpoint(tmp_path / 'run' / 'latest', trainer, adamw, step=3, config=None)
  assert 'latentDLM_mmdit' not in sys.modules

  out = _convert(capsys, '--input', tmp_path / 'run', '--output', tmp_path / 'out')
  assert "latentDLM's state.step 3 counts the micro-batches done" in out
  assert 'AdamW moments after 3 updates' in out
  assert 'latentDLM_mmdit' not in sys.modules  # nothing of the reference was imported
  weights = sources.read(str(tmp_path / 'out'), with_moments=True)
  assert (weights.steps_done, weights.moments.updates) == (3, 3)
  torch_moments = adamw.state_dict()['state']
  first = list(trainer.state_dict()).index('model.text_head.weight')
  np.testing.assert_array_equal(weights.moments.nu['text_head']['kernel'], torch_moments[first]['exp_avg_sq'].numpy().T)
  # With --unsafe-pickle too, the reference's class is a stand-in: its code is still not needed.
  _convert(capsys, '--input', tmp_path / 'run', '--output', tmp_path / 'unsafe', '--unsafe-pickle')
  assert sources.read(str(tmp_path / 'unsafe')).steps_done == 3


def test_exports_load_the_reference_way_and_keep_the_optimizer_state(tmp_path, capsys):
  """Reference checkpoint -> converted directory -> each --to-torch layout, loaded as the reference
  loads it (strict); AdamW's state comes back exactly, in the reference's parameter order."""
  model_config = models.tiny_config(cluster_size=3)
  trainer, adamw = _converted_cycle_run(
    tmp_path, capsys, model_config, seed=3, updates=2, step=6, tokenizer={'mask_token_id': 5}
  )
  assert json.loads((tmp_path / 'converted' / converted.INFO_FILE).read_text())['tokenizer'] == {'mask_token_id': 5}

  _convert(capsys, '--to-torch', '--input', tmp_path / 'converted', '--output', tmp_path / 'cycle.pt')
  fresh, fresh_adamw = _trained(model_config, seed=4, updates=0)
  step = reference_checkpoints.resume_cycle_trainer(tmp_path / 'cycle.pt', fresh, fresh_adamw)
  assert step == 6  # 7 micro-batches done, in the reference's numbering
  _assert_same_weights(fresh.model.state_dict(), trainer.model)
  restored, original = fresh_adamw.state_dict(), adamw.state_dict()
  assert sorted(restored['state']) == sorted(original['state'])
  for index, state in original['state'].items():
    for key in ('step', 'exp_avg', 'exp_avg_sq'):
      assert torch.equal(restored['state'][index][key], state[key]), (index, key)
  assert restored['param_groups'][0]['betas'] == (0.9, 0.95)

  _convert(
    capsys,
    '--to-torch',
    '--input',
    tmp_path / 'converted',
    '--output',
    tmp_path / 'sampler.pt',
    '--torch-layout',
    'latentdlm',
  )
  with pytest.raises(RuntimeError, match='text_head_clusters'):  # its samplers build no cluster head
    reference_checkpoints.load_like_latentdlm_sampler(tmp_path / 'sampler.pt', model_config)

  _convert(
    capsys, '--to-torch', '--input', tmp_path / 'converted', '--output', tmp_path / 'bare.pt', '--torch-layout', 'bare'
  )
  bare = torch.load(tmp_path / 'bare.pt', weights_only=True)
  reference_model.ReferenceMultimodalMMDiT(model_config).load_state_dict(bare, strict=True)
  _assert_same_weights(bare, trainer.model)

  out = _convert(capsys, '--to-torch', '--input', tmp_path / 'converted', '--output', tmp_path / 'w.safetensors')
  assert 'weights only' in out
  code = convert_torch_weights.main(
    [
      '--to-torch',
      '--input',
      str(tmp_path / 'converted'),
      '--output',
      str(tmp_path / 'x.safetensors'),
      '--torch-layout',
      'cycle',
    ]
  )
  assert code == 1 and 'holds tensors only' in capsys.readouterr().err


def test_latentdlm_samplers_load_the_export_strictly(tmp_path, capsys):
  model_config = models.tiny_config()
  trainer, adamw = _converted_cycle_run(tmp_path, capsys, model_config, seed=5, updates=2, step=2)
  _convert(
    capsys,
    '--to-torch',
    '--input',
    tmp_path / 'converted',
    '--output',
    tmp_path / 'model.pth',
    '--torch-layout',
    'latentdlm',
  )
  sampler_model = reference_checkpoints.load_like_latentdlm_sampler(tmp_path / 'model.pth', model_config)
  _assert_same_weights(sampler_model.state_dict(), trainer.model)


def test_weights_without_optimizer_state_export_without_it(tmp_path, capsys):
  model_config = models.tiny_config(num_residual_streams=1, n_blocks=1)
  torch.save(reference_model.ReferenceMultimodalMMDiT(model_config).state_dict(), tmp_path / 'model.pth')
  out = _convert(capsys, '--input', tmp_path / 'model.pth', '--output', tmp_path / 'converted')
  assert 'optimizer state: none' in out and 'step: unknown' in out
  out = _convert(capsys, '--to-torch', '--input', tmp_path / 'converted', '--output', tmp_path / 'cycle.pt')
  assert 'no optimizer state' in out
  checkpoint = torch.load(tmp_path / 'cycle.pt', weights_only=True)
  assert checkpoint['optimizer_state_dict'] is None and checkpoint['step'] == 0
  assert not os.path.isdir(tmp_path / 'converted' / converted.OPTIMIZER_DIR)


@pytest.mark.slow  # one training run (its train step compiles in about 10 s on 2 cores)
def test_chain_reference_run_to_lgdlm_jax_and_back(tmp_path, capsys):
  """The reference's run directory -> converted -> training continues mid-schedule in lgdlm_jax ->
  exported -> loaded by the reference's --resume (and its samplers) strictly."""
  config = runs.tiny_config(
    **{
      'training.num_train_steps': 6,
      'training.save_every': 0,
      'training.lr_schedule': 'cosine',
      'training.warmup_steps': 2,
    }
  )
  _converted_cycle_run(tmp_path, capsys, config.model, seed=6, updates=4, step=3)  # after micro-batches 0..3
  config.update(init_from=str(tmp_path / 'converted'), init_from_optimizer=True)
  workdir = tmp_path / 'jax_run'
  state = loop.run(config, str(workdir))

  rows = [r for r in metrics_log.read_log(str(workdir)) if 'loss' in r]
  assert [r['step'] for r in rows] == [5, 6]  # micro-batches 4 and 5, the reference's steps 4 and 5
  np.testing.assert_allclose([r['lr'] for r in rows], [reference_lr.get_lr(config, s) for s in (4, 5)], rtol=1e-6)  # pylint: disable=protected-access
  assert int(state.step) == 6
  trained = exporters.ordered_state_dict(jax.device_get(state.params), config.model, None)

  _convert(capsys, '--to-torch', '--input', workdir, '--output', tmp_path / 'cycle.pt')
  fresh, fresh_adamw = _trained(config.model, seed=7, updates=0)
  assert reference_checkpoints.resume_cycle_trainer(tmp_path / 'cycle.pt', fresh, fresh_adamw) == 5
  _assert_same_weights(trained, fresh.model)
  assert {float(s['step']) for s in fresh_adamw.state_dict()['state'].values()} == {6.0}
  for p in fresh.parameters():  # the reference carries on from the loaded state
    p.grad = torch.ones_like(p)
  fresh_adamw.step()

  _convert(capsys, '--to-torch', '--input', workdir, '--output', tmp_path / 'model.pth', '--torch-layout', 'latentdlm')
  _assert_same_weights(trained, reference_checkpoints.load_like_latentdlm_sampler(tmp_path / 'model.pth', config.model))
  _convert(capsys, '--to-torch', '--input', workdir, '--output', tmp_path / 'bare.safetensors')
  bare_model = reference_model.ReferenceMultimodalMMDiT(config.model)
  bare_model.load_state_dict(safetensors.torch.load_file(str(tmp_path / 'bare.safetensors')), strict=True)
  _assert_same_weights(trained, bare_model)


@pytest.mark.slow  # two training runs with two grain worker processes each
@pytest.mark.parametrize('with_optimizer', [False, True])
def test_readme_chain_with_the_reference_yaml_and_its_data_workers(tmp_path, capsys, with_optimizer):
  """README "Coming from PyTorch LGDLM": the reference's run directory -> convert -> main with the
  reference's own YAML (data.num_workers: 2) and init_from, with and without the optimizer state."""
  yaml_path = os.path.join(runs.REPO, 'tests', 'data', 'mmdit_cycle_vae.yaml')
  tiny = {k: v for k, v in runs.TINY_OVERRIDES.items() if not k.startswith(('training.', 'loss.', 'optimizer.'))}
  config = reference_yaml.load_reference_yaml(yaml_path)
  for key, value in tiny.items():
    section, name = key.split('.')
    config[section][name] = value
  assert config.data.num_workers == 2
  _converted_cycle_run(tmp_path, capsys, config.model, seed=3, updates=3, step=2)  # after micro-batches 0..2
  workdir = tmp_path / 'jax_run'
  code = main.main(
    [
      '--config',
      f'{runs.REPO}/configs/reference_yaml.py:{yaml_path}',
      '--workdir',
      str(workdir),
      f'--config.init_from={tmp_path / "converted"}',
      f'--config.init_from_optimizer={with_optimizer}',
      '--config.training.num_train_steps=5',
      '--config.training.eval_every=0',
      '--config.training.print_examples=0',
      *(f'--config.{k}={v}' for k, v in tiny.items()),
    ]
  )
  assert code == 0, capsys.readouterr().err[-3000:]
  steps = [r['step'] for r in metrics_log.read_log(str(workdir)) if 'loss' in r]
  assert steps == ([4, 5] if with_optimizer else [1, 2, 3, 4, 5])  # the converted run did micro-batches 0..2
