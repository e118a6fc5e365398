"""latentDLM's Hydra YAMLs through --config configs/reference_yaml.py:FILE (lgdlm_jax.config.latentdlm_yaml): the
values its stable trainer really runs with, every key mapped or reported as unused."""

from pathlib import Path

import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax.config import reference_yaml
from lgdlm_jax.errors import ConfigError

# The shape of the reference's configs/optimizer/adam.yaml and logging/default.yaml.
ADAM = 'type: adam\nlr: 5e-4\nbetas: [0.9, 0.99]\neps: 1e-9\nweight_decay: 0.02\ngrad_clip_norm: 1.0\n'
LOGGING = 'run_name: null\nnum_eval_batches: 196\nlog_freq: 10\neval_freq: 2000\nsave_freq: 2000\nsave_dir: ckpt\n'
# The shape of mmdit_stable.yaml (small sizes): what it says and what the trainer does differ.
STABLE = """defaults:
  - logging: default
  - optimizer: adam
  - _self_
model:
  type: multimodal_mmdit
  hidden_size: 32
  n_blocks: 1
  n_heads: 24
  cond_dim: 32
  max_seq_len: 16
  latent_dim: 8
  num_residual_streams: 1
  latent_timesteps: 1000
  latent_beta_schedule: cosine
  latent_parameterization: epsilon
  p_uniform: 0.0
  t_eps: 1e-4
training:
  seed: 42
  train_batch_size: 4
  num_epochs: 10
  num_train_steps: 1000000
  dtype: bf16
  lr_schedule: cosine
  warmup_steps: 2000
  gradient_accumulation_steps: 2
loss:
  loss_type: l2t
  loss_scale: 1.0
  reduction: tokenmean
  latent_loss_weight: 0.1
  text_loss_weight: 1.0
logging:
  log_freq: 10000
  eval_freq: 10000
  save_freq: 50000
  num_eval_batches: 20
optimizer:
  name: adamw
  lr: 5e-5
  weight_decay: 0.01
  beta1: 0.9
  beta2: 0.95
  eps: 1e-8
  grad_clip_norm: 0.5
  use_fused: true
hydra:
  run:
    dir: out
"""
# mmdit_preprocessed.yaml's schedule (an entry without steps takes 1000).
SCHEDULE = """  sequential_schedule:
    - type: unconditional
      steps: 5000
    - type: l2t
    - type: t2l
      steps: 10000
"""


def write(tmp_path: Path, main: str, adam: str = ADAM) -> Path:
  (tmp_path / 'optimizer').mkdir()
  (tmp_path / 'logging').mkdir()
  (tmp_path / 'optimizer' / 'adam.yaml').write_text(adam)
  (tmp_path / 'logging' / 'default.yaml').write_text(LOGGING)
  path = tmp_path / 'mmdit_stable.yaml'
  path.write_text(main)
  return path


def test_stable_yaml_gives_the_values_its_trainer_runs_with(tmp_path):
  config, ignored, notes = reference_yaml.read_with_notes(write(tmp_path, STABLE))
  opt = config.optimizer
  assert (opt.beta1, opt.beta2, opt.lr, opt.eps, opt.weight_decay, opt.grad_clip_norm) == (
    0.9,
    0.99,
    5e-5,
    1e-8,
    0.01,
    0.5,
  )
  assert config.training.gradient_accumulation_steps == 1
  assert (config.loss.loss_type, config.loss.latent_loss_weight, config.model.dtype) == ('l2t', 0.1, 'bfloat16')
  training = config.training
  assert (training.log_every, training.eval_every, training.save_every, training.eval_batches) == (
    10000,
    10000,
    50000,
    20,
  )
  for key in ('optimizer.beta2', 'optimizer.name', 'optimizer.use_fused', 'training.gradient_accumulation_steps'):
    assert key in ignored
  for key in ('training.num_epochs', 'loss.reduction', 'loss.text_loss_weight', 'model.t_eps', 'hydra.run.dir'):
    assert key in ignored
  assert any('betas (0.9, 0.99)' in note for note in notes)
  assert any('gradient_accumulation_steps=2' in note for note in notes)
  config_lib.finalize(config)


def test_sequential_schedule_and_the_logged_effective_values(tmp_path, caplog):
  text = STABLE.replace('  loss_type: l2t\n', '  loss_type: sequential\n').replace(
    '  gradient_accumulation_steps: 2\n', SCHEDULE
  )
  config = config_lib.finalize(reference_yaml.load_reference_yaml(write(tmp_path, text)))
  assert config.training.sequential_schedule == (('unconditional', 5000), ('l2t', 1000), ('t2l', 10000))
  logged = caplog.text
  assert 'betas (0.9, 0.99)' in logged and 'optimizer.beta2' in logged and 'lr * step / warmup' in logged


def test_without_loss_type_the_stable_trainer_trains_unconditional_and_clip_zero_is_one(tmp_path):
  text = STABLE.replace('  loss_type: l2t\n', '').replace('  grad_clip_norm: 0.5\n', '  grad_clip_norm: 0\n')
  config, _, notes = reference_yaml.read_with_notes(write(tmp_path, text))
  assert config.loss.loss_type == 'unconditional' and config.optimizer.grad_clip_norm == 1.0
  assert any('unconditional' in note for note in notes)


@pytest.mark.parametrize(
  'main,adam,key',
  [
    (STABLE.replace('loss_type: l2t', 'loss_type: mixed'), ADAM, 'loss.loss_type'),
    (STABLE, ADAM.replace('type: adam', 'type: psgd'), 'optimizer.type'),
    (STABLE.replace('loss_scale: 1.0', 'loss_scale: 2.0'), ADAM, 'loss.loss_scale'),
    (
      STABLE.replace('  gradient_accumulation_steps: 2\n', '  sequential_schedule: [3]\n'),
      ADAM,
      'training.sequential_schedule',
    ),
  ],
)
def test_bad_value_names_the_file_and_the_key(tmp_path, main, adam, key):
  with pytest.raises(ConfigError, match=rf'mmdit_stable.yaml: {key.replace(".", "[.]")}') as raised:
    reference_yaml.read_with_notes(write(tmp_path, main, adam))
  assert '\n' not in str(raised.value)


def test_missing_defaults_file_is_named(tmp_path):
  path = write(tmp_path, STABLE)
  (tmp_path / 'logging' / 'default.yaml').unlink()
  with pytest.raises(ConfigError, match='logging/default.yaml'):
    reference_yaml.read_with_notes(path)
