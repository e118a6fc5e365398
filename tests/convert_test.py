"""The state-dict mapping: exact round trips and errors that name the offending key and shapes."""

import numpy as np
import pytest

from lgdlm_jax import convert
from lgdlm_jax.convert import exporters
from lgdlm_jax.convert import mapping
from lgdlm_jax.reference import model as reference_model
from tests.helpers import models


@pytest.mark.parametrize('streams,cluster', [(1, 0), (2, 3), (4, 0)])
def test_round_trip_torch_flax_torch_is_exact(streams, cluster):
  cfg = models.tiny_config(num_residual_streams=streams, cluster_size=cluster)
  torch_model, params = models.build_pair(cfg, seed=streams)
  state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  back = convert.flax_to_torch(params, cfg)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    assert back[key].shape == value.shape, key
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_stacked_blocks_and_transposed_kernels():
  cfg = models.tiny_config(n_blocks=3)
  torch_model, params = models.build_pair(cfg)
  weight = torch_model.mmdit.blocks[2].feedforwards[1].ff[0][0].weight.detach().numpy()
  np.testing.assert_array_equal(params['mmdit']['blocks']['feedforwards_1']['ff_0_0']['kernel'][2], weight.T)
  embed = torch_model.text_encoder.token_embed.weight.detach().numpy()
  np.testing.assert_array_equal(params['text_encoder']['token_embed']['embedding'], embed)


def _state(cfg):
  torch_model, _ = models.build_pair(cfg, perturb=False)
  return {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}


def test_missing_key_is_named():
  cfg = models.tiny_config()
  state = _state(cfg)
  del state['mmdit.blocks.1.joint_attn.to_qkv.0.weight']
  with pytest.raises(convert.ConversionError, match=r'missing key mmdit\.blocks\.1\.joint_attn\.to_qkv\.0\.weight'):
    convert.torch_to_flax(state, cfg)


def test_unexpected_key_is_named():
  cfg = models.tiny_config()
  state = _state(cfg)
  state['text_head_clusters.weight'] = np.zeros((cfg.vocab_size, cfg.hidden_size), np.float32)
  with pytest.raises(convert.ConversionError, match=r'unexpected key text_head_clusters\.weight'):
    convert.torch_to_flax(state, cfg)


def test_extra_block_is_named():
  cfg = models.tiny_config(n_blocks=2)
  state = _state(models.tiny_config(n_blocks=3))
  with pytest.raises(convert.ConversionError, match=r'block 2 but model.n_blocks=2'):
    convert.torch_to_flax(state, cfg)


def test_shape_mismatch_names_both_shapes_in_torch_terms():
  cfg = models.tiny_config()
  state = _state(models.tiny_config(latent_dim=12))
  with pytest.raises(
    convert.ConversionError,
    match=r'latent_encoder\.projection\.0\.weight \(128, 12\).*expects '
    r'latent_encoder\.projection\.0\.weight \(128, 8\)',
  ):
    convert.torch_to_flax(state, cfg)


def test_flax_to_torch_rejects_params_of_another_config():
  cfg = models.tiny_config()
  _, params = models.build_pair(models.tiny_config(hidden_size=32))
  with pytest.raises(convert.ConversionError, match='shape mismatch'):
    convert.flax_to_torch(params, cfg)


@pytest.mark.parametrize('streams,cluster', [(1, 0), (2, 3)])
def test_reference_parameter_order_is_the_reference_models(streams, cluster):
  """The optimizer state's parameter indices follow this order (the real mmdit's, for the backbone)."""
  cfg = models.tiny_config(num_residual_streams=streams, cluster_size=cluster, n_blocks=2)
  torch_model = reference_model.ReferenceMultimodalMMDiT(cfg)
  assert convert.reference_parameter_order(cfg) == [name for name, _ in torch_model.named_parameters()]


def test_an_unknown_module_has_no_place_in_the_order(monkeypatch):
  cfg = models.tiny_config()
  shapes = dict(convert.torch_param_shapes(cfg), **{'mystery_head.weight': (1,)})
  monkeypatch.setattr(mapping, 'torch_param_shapes', lambda _: shapes)
  with pytest.raises(convert.ConversionError, match='mystery_head.weight: no known position'):
    convert.reference_parameter_order(cfg)


def test_the_length_head_is_left_out_of_an_export_with_one_line(caplog):
  cfg = models.tiny_config(num_residual_streams=1, n_blocks=1)
  torch_model, params = models.build_pair(cfg, perturb=False)
  with_head = models.tiny_config(num_residual_streams=1, n_blocks=1, length_head=True)
  head_shapes = {p: s for p, s in mapping.param_shapes(with_head).items() if p[0] == 'length_head'}
  assert head_shapes  # the model with a head has its parameters ...
  params = dict(params, length_head={'hidden': {}, 'logits': {}})
  for (_, layer, leaf), shape in head_shapes.items():
    params['length_head'][layer][leaf] = np.ones(shape, np.float32)
  exported = exporters.ordered_state_dict(params, with_head, None)  # ... and the export drops them
  assert list(exported) == list(torch_model.state_dict())
  assert sum('length head' in r.getMessage() for r in caplog.records) == 1
