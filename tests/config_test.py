"""lgdlm_jax.config: finalize (normalise, validate, freeze), from_json, for_processes, check_devices."""

import json
import pathlib
import re

import ml_collections
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.config import schema
from lgdlm_jax.model import mmdit


def _with(**values) -> ml_collections.ConfigDict:
  config = config_lib.default_config()
  for key, value in values.items():
    section, name = key.split('__')
    with config[section].ignore_type():
      config[section][name] = value
  return config


def test_finalize_freezes_a_copy_and_normalises_the_reference_spellings():
  config = _with(loss__latent_t_mode='T1', training__lr_schedule='Cosine', optimizer__name='AdamW')
  frozen = config_lib.finalize(config)
  assert isinstance(frozen, ml_collections.FrozenConfigDict)
  assert (frozen.loss.latent_t_mode, frozen.training.lr_schedule, frozen.optimizer.name) == ('full', 'cosine', 'adamw')
  assert config.loss.latent_t_mode == 'T1'  # the caller's config is left alone
  assert config_lib.finalize(frozen) is frozen
  with pytest.raises(AttributeError):
    frozen.model.hidden_size = 3


@pytest.mark.parametrize(
  'key, value',
  [
    ('model__hidden_size', 0),
    ('model__n_blocks', -1),
    ('model__dtype', 'float16'),
    ('model__dropout', 1.0),
    ('model__scan_unroll', -1),
    ('model__scan_unroll', 1.5),
    ('model__scan_unroll', True),
    ('model__remat_policy', 'sometimes'),
    ('data__val_ratio', 1.0),
    ('data__num_workers', -1),
    ('training__train_batch_size', 0),
    ('training__lr_schedule', 'step'),
    ('training__eval_temperature', -0.5),
    ('loss__cycle_text_weight', -1.0),
    ('loss__cycle_latent_sampling', 'nucleus'),
    ('loss__latent_t_mode', 'half'),
    ('optimizer__lr', float('nan')),
    ('optimizer__beta2', 1.0),
    ('optimizer__grad_clip_norm', -1.0),
    ('mesh__fsdp', 0),
    ('debug__check_finite', 1),
    ('tokenizer__mask_token_id', 8192),
    ('init_from', 3),
    ('training__round_gradients', 'later'),
  ],
)
def test_every_bad_value_is_named_with_its_key(key, value):
  config = config_lib.default_config()
  if '__' in key:
    config = _with(**{key: value})
  else:
    with config.ignore_type():
      config[key] = value
  with pytest.raises(config_lib.ConfigError, match=key.replace('__', '.')):
    config_lib.finalize(config)


@pytest.mark.parametrize(
  'values, match',
  [
    (dict(loss__cycle_latent_t_min=0.5, loss__cycle_latent_t_max=0.5), 'cycle_latent_t_min'),
    (dict(data__data_dir='d', data__token_dir='t', data__latent_dir='l'), 'data.data_dir'),
    (dict(data__token_dir='t'), 'data.token_dir'),
    (dict(training__eval_sample_batches=5, training__eval_batches=4), 'eval_sample_batches'),
    (dict(training__round_gradients='sequential', loss__cycle_stop_grad_latent=False), 'round_gradients'),
  ],
)
def test_keys_that_must_agree_are_named(values, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.finalize(_with(**values))


def test_unknown_and_missing_keys_are_named():
  config = config_lib.default_config()
  config.model.unlock()
  config.model.hiden_size = 3
  with pytest.raises(config_lib.ConfigError, match='model.hiden_size: no such config key'):
    config_lib.finalize(config)
  config = config_lib.default_config()
  del config.training['seed']
  with pytest.raises(config_lib.ConfigError, match='training.seed is missing'):
    config_lib.finalize(config)


def test_an_older_config_json_loads_with_the_schemas_defaults_for_newer_keys():
  stored = json.loads(config_lib.default_config().to_json())
  del stored['model']['scan_unroll'], stored['training']['compilation_cache']
  stored['model']['hidden_size'] = 64
  loaded = config_lib.from_json(json.dumps(stored))
  assert loaded.model.hidden_size == 64
  assert loaded.model.scan_unroll == config_lib.default_config().model.scan_unroll
  assert config_lib.from_json(config_lib.default_config().to_json()) == config_lib.finalize(config_lib.default_config())
  stored['model']['retired_key'] = 1
  with pytest.raises(config_lib.ConfigError, match='run/config.json: model.retired_key'):
    config_lib.from_json(json.dumps(stored), source='run/config.json')
  with pytest.raises(config_lib.ConfigError, match='not valid JSON'):
    config_lib.from_json('{"model": ', source='run/config.json')


def test_per_process_batches_become_global_after_start_up():
  config = config_lib.finalize(
    _with(training__batch_size_per='process', training__train_batch_size=4, training__eval_batch_size=2)
  )
  resolved = config_lib.for_processes(config, process_count=3)
  assert (resolved.training.train_batch_size, resolved.training.eval_batch_size) == (12, 6)
  assert resolved.training.batch_size_per == 'global'
  plain = config_lib.finalize(config_lib.default_config())
  assert config_lib.for_processes(plain, 3) is plain


@pytest.mark.parametrize(
  'values, devices, processes, match',
  [
    (dict(mesh__fsdp=3), 4, 1, 'mesh.fsdp=3 does not divide the 4 devices'),
    (dict(training__train_batch_size=2), 4, 1, 'training.train_batch_size=2 does not divide over the 4 devices'),
    (dict(training__train_batch_size=4, training__eval_batch_size=2), 4, 1, 'eval_batch_size=2'),
    (dict(training__train_batch_size=6, training__eval_batch_size=6), 6, 4, 'over the 4 processes'),
  ],
)
def test_device_checks_name_the_key(values, devices, processes, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.check_devices(config_lib.finalize(_with(**values)), devices, processes)


def test_no_evaluation_means_no_eval_batch_check():
  config = config_lib.finalize(_with(training__train_batch_size=4, training__eval_batch_size=2, training__eval_every=0))
  config_lib.check_devices(config, 4, 1)


def test_the_schemas_choices_are_the_names_the_model_knows():
  assert set(schema.CHOICES['model.dtype']) == set(model_lib.COMPUTE_DTYPES)
  assert set(schema.CHOICES['model.remat_policy']) == set(mmdit.REMAT_POLICIES)


def _table_keys(markdown: str, header: str) -> set[str]:
  """The config keys named in a markdown table's first column; `a.b`, `c` in one cell means a.b and a.c."""
  rows = markdown.split(header, 1)[1].split('\n\n', 1)[0].splitlines()[2:]
  keys = set()
  for row in rows:
    section = ''
    for name in re.findall(r'`([\w.]+)`', row.split('|')[1]):
      section = name.rpartition('.')[0] or section
      keys.add(name if '.' in name or not section else f'{section}.{name}')
  return keys


def test_the_research_loop_doc_lists_the_keys_that_may_change_on_resume():
  doc = (pathlib.Path(__file__).resolve().parent.parent / 'docs' / 'research_loop.md').read_text()
  assert _table_keys(doc, '| key | why it may change |') == set(config_lib.CHANGEABLE_ON_RESUME)
