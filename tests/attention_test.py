"""The attention backends against `xla` (the model's plain computation): forward and gradients.

blockwise runs on CPU as it is; splash runs under the Pallas TPU interpret mode (its CPU emulation,
slow: small shapes only); cudnn needs an NVIDIA GPU (tests/aot_test.py checks its deviceless H100
compile). Every comparison is float32 at 'highest' matmul precision, to 1e-5.
"""

import jax
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.errors import ConfigError
from lgdlm_jax.model import attention
from lgdlm_jax.model import passes
from tests.helpers import models

TOL = 1e-5
HEADS, HEAD_DIM = 8, 64


def joint_inputs(batch=3, seq_len=37, seed=0, dtype=jnp.float32):
  """Text [B,S] and latent [B,1] queries/keys/values, and a text key mask with one row unpadded."""
  rng = np.random.default_rng(seed)
  draw = lambda n: jnp.asarray(rng.standard_normal((batch, n, HEADS, HEAD_DIM)), dtype)
  lengths = np.resize([seq_len, seq_len // 2, 3], batch)
  mask = jnp.asarray(np.arange(seq_len)[None] < lengths[:, None])
  return (draw(seq_len), draw(1)), (draw(seq_len), draw(1)), (draw(seq_len), draw(1)), (mask, None)


def value_and_grads(options, qs, ks, vs, masks):
  """The outputs and the gradients of a loss that weighs every output element differently."""

  def loss(qs, ks, vs):
    outs = attention.joint_attention(qs, ks, vs, masks, options)
    weights = [jnp.cos(jnp.arange(o.size, dtype=jnp.float32).reshape(o.shape)) for o in outs]
    return sum(jnp.sum(o * w) for o, w in zip(outs, weights)), outs

  with jax.default_matmul_precision('highest'):
    (_, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(qs, ks, vs)
  return outs, grads


def assert_same(got, expected, tol=TOL, rtol=0.0):
  for (path, e), g in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=tol, rtol=rtol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('block_size', [8, 16, 512])
def test_blockwise_equals_xla_with_padding_and_partial_blocks(block_size):
  # 38 joint tokens: blocks of 8 and 16 leave a partial last block; 512 is one block of them all.
  inputs = joint_inputs()
  expected = value_and_grads(attention.AttentionOptions('xla', jnp.float32), *inputs)
  got = value_and_grads(attention.AttentionOptions('blockwise', jnp.float32, blockwise_block_size=block_size), *inputs)
  assert_same(got, expected)


def test_blockwise_masked_keys_have_no_effect():
  # What sits under a padding key must change neither an output nor another key's gradient.
  qs, ks, vs, masks = joint_inputs()
  options = attention.AttentionOptions('blockwise', jnp.float32, blockwise_block_size=8)
  altered = tuple(x.at[1, 20:].set(7.0) if i == 0 else x for i, x in enumerate(vs))
  a, b = value_and_grads(options, qs, ks, vs, masks), value_and_grads(options, qs, ks, altered, masks)
  assert_same(b[0], a[0], tol=1e-6)
  # ... and does when unmasked (so the check above can fail).
  c = value_and_grads(options, qs, ks, altered, (None, None))
  assert float(jnp.max(jnp.abs(c[0][0] - a[0][0]))) > 1e-3


def test_splash_equals_xla_under_the_tpu_interpret_mode_and_a_mesh():
  # 38 tokens padded to one 128-token block; traced under a (1 x 1) mesh, so through shard_map.
  inputs = joint_inputs(batch=2)
  expected = value_and_grads(attention.AttentionOptions('xla', jnp.float32), *inputs)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ('data', 'fsdp'))
  options = attention.AttentionOptions('splash', jnp.float32, splash_block_size=512)
  with pltpu.force_tpu_interpret_mode(), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    got = value_and_grads(options, *inputs)
  assert_same(got, expected)


@pytest.mark.parametrize(
  'length, block_size, expected',
  [(4097, 512, (4224, 384)), (4096, 512, (4096, 512)), (38, 512, (128, 128)), (300, 256, (384, 128))],
)
def test_splash_pads_to_lanes_and_picks_a_dividing_block(length, block_size, expected):
  assert attention.splash_block_size(length, block_size) == expected


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN attention needs an NVIDIA GPU')
def test_cudnn_equals_xla_in_bfloat16():
  inputs = joint_inputs(seq_len=301, dtype=jnp.bfloat16)
  expected = value_and_grads(attention.AttentionOptions('xla', jnp.bfloat16), *inputs)
  got = value_and_grads(attention.AttentionOptions('cudnn', jnp.bfloat16), *inputs)
  # Both round to bfloat16 (8 bits of mantissa) at different points: a few ulps of values ~1.
  assert_same(got, expected, tol=3e-2)


def passes_loss(cfg, params, inputs):
  """A loss over both rounds' row layouts: two interleaved passes (T2L and L2T), text heads on one."""
  tokens, latents, text_t, latent_t, mask = inputs
  model = model_lib.MultimodalMMDiT(cfg)
  both = [
    passes.ModelPass(tokens, latents, text_t, latent_t, mask),
    passes.ModelPass(jnp.full_like(tokens, 3), latents * 0.5, 1.0 - text_t, latent_t * 0, mask),
  ]
  (_, latent_a), (logits_b, latent_b) = passes.run_passes(
    model, params, both, deterministic=True, dropout_key=None, text_logits_wanted=[False, True]
  )
  return jnp.sum(jnp.sin(logits_b)) + jnp.sum(latent_a * latent_b), (logits_b, latent_a, latent_b)


def model_value_and_grads(cfg, params, inputs):
  with jax.default_matmul_precision('highest'):
    return jax.jit(jax.value_and_grad(lambda p: passes_loss(cfg, p, inputs), has_aux=True))(params)


@pytest.mark.slow  # two compiles of a model's gradient (~20 s)
@pytest.mark.parametrize('streams', [1, 2])
def test_blockwise_model_equals_xla_model_in_outputs_and_parameter_gradients(streams):
  cfg = models.tiny_config(num_residual_streams=streams, n_blocks=1, attention='xla')
  _, params = models.build_pair(cfg, seed=streams)
  inputs = models.make_inputs(cfg, batch=2, seq_len=13)
  (_, expected), expected_grads = model_value_and_grads(ml_collections.FrozenConfigDict(cfg), params, inputs)
  cfg.update(attention='blockwise', blockwise_block_size=4)  # 14 joint tokens: a partial last block
  (_, got), grads = model_value_and_grads(ml_collections.FrozenConfigDict(cfg), params, inputs)
  assert_same(got, expected)
  # Parameter gradients reach ~50 (the text head's): 1e-5 of their size, as float32 rounding allows.
  assert_same(grads, expected_grads, rtol=TOL)


@pytest.mark.slow  # ~1 minute: the TPU interpret mode emulates the kernels' every grid step in Python
@pytest.mark.parametrize('streams', [1, 2])
def test_splash_model_equals_xla_model_in_outputs_and_parameter_gradients(streams):
  cfg = models.tiny_config(num_residual_streams=streams, n_blocks=1, attention='xla')
  _, params = models.build_pair(cfg, seed=streams)
  inputs = models.make_inputs(cfg, batch=2, seq_len=13)
  (_, expected), expected_grads = model_value_and_grads(ml_collections.FrozenConfigDict(cfg), params, inputs)
  cfg.update(attention='splash', splash_block_size=128)
  with pltpu.force_tpu_interpret_mode():
    (_, got), grads = model_value_and_grads(ml_collections.FrozenConfigDict(cfg), params, inputs)
  assert_same(got, expected)
  # Parameter gradients reach ~50 (the text head's): 1e-5 of their size, as float32 rounding allows.
  assert_same(grads, expected_grads, rtol=TOL)


@pytest.mark.parametrize(
  'platform, dtype, max_seq_len, expected',
  [
    ('tpu', 'bfloat16', 4096, 'splash'),
    ('gpu', 'bfloat16', 4096, 'cudnn'),
    ('gpu', 'float32', 4096, 'blockwise'),
    ('cpu', 'float32', 128, 'xla'),
    ('cpu', 'float32', attention.CPU_BLOCKWISE_FROM - 2, 'xla'),
    ('cpu', 'float32', attention.CPU_BLOCKWISE_FROM - 1, 'blockwise'),
    ('cpu', 'float32', 4096, 'blockwise'),
  ],
)
def test_auto_resolves_by_platform_dtype_and_length(platform, dtype, max_seq_len, expected):
  config = config_lib.default_config()
  config.model.update(dtype=dtype, max_seq_len=max_seq_len)
  resolved = attention.resolve(config_lib.finalize(config), platform)
  assert resolved.model.attention == expected
  assert resolved.model.max_seq_len == max_seq_len and isinstance(resolved, ml_collections.FrozenConfigDict)


@pytest.mark.parametrize(
  'backend, platform, message',
  [('splash', 'cpu', "'splash' runs on TPUs only"), ('cudnn', 'tpu', "'cudnn' runs on NVIDIA GPUs only")],
)
def test_a_backend_the_platform_cannot_run_is_named(backend, platform, message):
  config = config_lib.default_config()
  config.model.update(attention=backend, dtype='bfloat16')
  with pytest.raises(ConfigError, match=message):
    attention.resolve(config_lib.finalize(config), platform)


def packed_config(**model):
  config = config_lib.default_config()
  config.model.update(dtype='bfloat16', **model)
  config.data.packing = True
  return config


@pytest.mark.parametrize('platform, expected', [('gpu', 'blockwise'), ('tpu', 'splash'), ('cpu', 'xla')])
def test_auto_with_packing_picks_a_backend_that_takes_segment_ids(platform, expected):
  config = packed_config()
  resolved = attention.resolve(ml_collections.FrozenConfigDict(config), platform)
  assert resolved.model.attention == expected


def test_cudnn_with_packing_is_a_config_error_naming_both_keys():
  config = packed_config(attention='cudnn')
  with pytest.raises(ConfigError, match=r"model.attention='cudnn' cannot run data.packing=True"):
    attention.resolve(ml_collections.FrozenConfigDict(config), 'gpu')


def test_cudnn_in_float32_is_a_config_error():
  config = config_lib.default_config()
  config.model.attention = 'cudnn'
  with pytest.raises(ConfigError, match="model.attention='cudnn' needs model.dtype='bfloat16'"):
    config_lib.finalize(config)
