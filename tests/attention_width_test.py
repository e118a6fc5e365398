"""model.num_heads / model.head_dim: parity with mmdit's own MMDiT at another width, and the
converter's inference of the width from a checkpoint's shapes."""

import json
import logging

import numpy as np
import pytest

import convert_torch_weights
from lgdlm_jax.config import reference_yaml
from lgdlm_jax.convert import converted
from lgdlm_jax.convert import layout
from lgdlm_jax.convert import mapping
from lgdlm_jax.convert import verify
from lgdlm_jax.model import flops
from lgdlm_jax.training import loop
from tests.helpers import models
from tests.helpers import runs

QKV = layout.QKV_KEY


def _state_dict(**overrides) -> dict[str, np.ndarray]:
  torch_model, _ = models.build_pair(models.tiny_config(n_blocks=1, **overrides), seed=3, perturb=False)
  return {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}


def test_4_heads_of_32_match_mmdits_own_mmdit():
  # Read as 8 heads of 16 (the same inner width) or 4 of 64 the outputs or shapes would differ.
  cfg = models.tiny_config(num_heads=4, head_dim=32, n_blocks=1)
  torch_model, params = models.build_pair(cfg, seed=5)
  attention = torch_model.mmdit.blocks[0].joint_attn
  assert tuple(attention.to_qkv[0].weight.shape) == (3 * 4 * 32, cfg.hidden_size)
  assert attention.split_heads.axes_lengths['h'] == 4  # mmdit's own split, built with heads=4
  assert params['mmdit']['blocks']['joint_attn']['to_qkv_0']['kernel'].shape == (1, cfg.hidden_size, 3 * 128)
  state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  differences = verify.max_abs_differences(cfg, state, params, seed=2)
  assert max(differences.values()) < 1e-5, differences


def test_flops_count_the_attention_width():
  wide, narrow = models.tiny_config(), models.tiny_config(num_heads=4, head_dim=32)
  assert flops.attention_flops_per_sequence(wide) == 4 * flops.attention_flops_per_sequence(narrow)


def test_the_width_is_inferred_from_the_tensors_where_they_show_it():
  reference = layout.infer_model_config(_state_dict(), {})
  assert (reference.config.num_heads, reference.config.head_dim) == (8, 64)
  assert 'inner width num_heads x head_dim = 512' in reference.sources['num_heads']
  narrow = _state_dict(num_heads=4, head_dim=32)
  assert (layout.infer_model_config(narrow, {'num_heads': 4}).config.head_dim) == 32
  assert (layout.infer_model_config(narrow, {'head_dim': 16}).config.num_heads) == 8
  saved = {'model': {'num_heads': 2, 'head_dim': 64}}
  from_saved = layout.infer_model_config(narrow, {}, saved)
  assert (from_saved.config.num_heads, from_saved.config.head_dim) == (2, 64)
  assert from_saved.sources['head_dim'].startswith('checkpoint config')


@pytest.mark.parametrize(
  'stated, saved, message',
  [
    (
      {},
      None,
      r'cannot infer num_heads x head_dim: .*inner width num_heads x head_dim = 128.*state num_heads or head_dim',
    ),
    ({'num_heads': 3}, None, r'num_heads: stated 3 does not divide the inner width'),
    ({'num_heads': 4, 'head_dim': 64}, None, r'num_heads x head_dim: stated 4 x 64, but .* = 128'),
    ({}, {'model': {'num_heads': 8, 'head_dim': 64}}, r'checkpoint config 8 x 64, but .* = 128'),
  ],
)
def test_a_width_the_tensors_contradict_or_do_not_split_is_one_line(stated, saved, message):
  with pytest.raises(mapping.ConversionError, match=message) as raised:
    layout.infer_model_config(_state_dict(num_heads=4, head_dim=32), stated, saved)
  assert '\n' not in str(raised.value)


def test_reference_yaml_n_heads_has_no_effect_and_says_so(caplog):
  with caplog.at_level(logging.WARNING):
    config = reference_yaml.load_reference_yaml(runs.REPO + '/tests/data/mmdit_cycle_vae.yaml')
  assert (config.model.num_heads, config.model.head_dim) == (8, 64)  # the YAML says n_heads: 4
  lines = [r.getMessage() for r in caplog.records if 'model.n_heads has no effect' in r.getMessage()]
  assert len(lines) == 1 and 'model.num_heads x model.head_dim = 8 x 64' in lines[0]


def _convert(capsys, *argv) -> str:
  code = convert_torch_weights.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  assert code == 0, err
  return out


@pytest.mark.slow  # a training run's compile and two conversions with --verify
def test_a_4_by_16_model_trains_and_converts_to_pytorch_and_back(tmp_path, capsys):
  config = runs.tiny_config(
    **{'model.num_heads': 4, 'model.head_dim': 16, 'training.num_train_steps': 1, 'training.save_every': 0}
  )
  state = loop.run(config, str(tmp_path / 'run'))
  assert np.isfinite(float(state.step)) and int(state.step) == 1
  _convert(capsys, '--to-torch', '--input', tmp_path / 'run', '--output', tmp_path / 'cycle.pt')
  out = _convert(capsys, '--input', tmp_path / 'cycle.pt', '--output', tmp_path / 'back', '--verify')
  assert 'num_heads=4 (checkpoint config; ' in out and 'head_dim=16 (checkpoint config; ' in out
  _convert(capsys, '--to-torch', '--input', tmp_path / 'run', '--output', tmp_path / 'bare.safetensors')
  out = _convert(capsys, '--input', tmp_path / 'bare.safetensors', '--output', tmp_path / 'bare', '--num-heads', '4')
  assert 'head_dim=16 (stated num_heads, ' in out
  code = convert_torch_weights.main(['--input', str(tmp_path / 'bare.safetensors'), '--output', str(tmp_path / 'x')])
  assert code != 0 and 'cannot infer num_heads x head_dim' in capsys.readouterr().err


def test_a_converted_directory_from_before_the_keys_is_8_by_64(tmp_path):
  saved = models.tiny_config().to_dict()
  del saved['num_heads'], saved['head_dim']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  loaded = converted.load_model_config(str(tmp_path))
  assert (loaded.num_heads, loaded.head_dim, loaded.hidden_size) == (8, 64, saved['hidden_size'])
