"""Forward parity of lgdlm_jax.model.MultimodalMMDiT with the real pinned PyTorch mmdit, and its contract."""

import functools

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from lgdlm_jax import config as config_lib
from lgdlm_jax import convert
from lgdlm_jax import model as model_lib
from lgdlm_jax.model import layers
from lgdlm_jax.model import passes
from lgdlm_jax.model import platform as model_platform
from tests.helpers.models import build_pair
from tests.helpers.models import make_inputs
from tests.helpers.models import tiny_config

TOL = 1e-5


def run_torch(torch_model, inputs):
  tokens, latents, text_t, latent_t, mask = inputs
  with torch.no_grad():
    outs = torch_model(
      torch.from_numpy(tokens).long(),
      torch.from_numpy(latents),
      torch.from_numpy(text_t),
      torch.from_numpy(latent_t),
      torch.from_numpy(mask),
    )
  return [o.numpy() for o in outs]


def run_flax(cfg, params, inputs, apply_fn=None):
  tokens, latents, text_t, latent_t, mask = inputs
  model = model_lib.MultimodalMMDiT(cfg)
  apply_fn = apply_fn or jax.jit(model.apply)
  with jax.default_matmul_precision('highest'):
    return [np.asarray(o) for o in apply_fn({'params': params}, tokens, latents, text_t, latent_t, mask)]


def assert_parity(cfg, torch_model, params, inputs):
  expected = run_torch(torch_model, inputs)
  got = run_flax(cfg, params, inputs)
  assert len(got) == len(expected)
  for name, g, e in zip(('text_logits', 'latent_pred', 'cluster_logits'), got, expected):
    assert g.shape == e.shape, (name, g.shape, e.shape)
    np.testing.assert_allclose(g, e, atol=TOL, rtol=0, err_msg=name)


class ForwardParityTest(parameterized.TestCase):
  @parameterized.product(streams=(1, 2, 4), latent_shape=('BxD', 'Bx1xD'))
  def test_matches_reference(self, streams, latent_shape):
    cfg = tiny_config(num_residual_streams=streams)
    torch_model, params = build_pair(cfg, seed=streams)
    assert_parity(cfg, torch_model, params, make_inputs(cfg, latent_shape=latent_shape))

  @parameterized.parameters(1, 2, 3, 8)
  def test_unrolled_blocks_match_reference(self, scan_unroll):
    # 3 blocks: 1 is a plain scan (the accelerators' auto choice; the other tests run auto = 0,
    # which unrolls on CPU), unroll 2 leaves a remainder iteration, 3 and 8 (more than the blocks)
    # unroll all.
    cfg = tiny_config(n_blocks=3, scan_unroll=scan_unroll)
    torch_model, params = build_pair(cfg, seed=11)
    assert_parity(cfg, torch_model, params, make_inputs(cfg))

  def test_matches_reference_with_cluster_head_and_k_latents(self):
    cfg = tiny_config(cluster_size=5, n_blocks=3)
    torch_model, params = build_pair(cfg, seed=7)
    assert_parity(cfg, torch_model, params, make_inputs(cfg, latent_shape='BxKxD', seq_len=16))

  def test_layer_norm_eps_is_torchs(self):
    # Pitfall guard: latent-encoder LayerNorm inputs with variance ~1e-6, where eps 1e-5 and 1e-6
    # give outputs that differ by far more than the tolerance.
    cfg = tiny_config()
    torch_model, _ = build_pair(cfg, seed=3)
    with torch.no_grad():
      torch_model.latent_encoder.projection[0].weight.mul_(3e-3)
      torch_model.latent_encoder.projection[0].bias.zero_()
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    params = convert.torch_to_flax(state, cfg)
    assert_parity(cfg, torch_model, params, make_inputs(cfg))

  def test_gelu_is_exact_erf(self):
    # Pitfall guard: tanh-approximate GELU differs from erf GELU by ~1e-4 around |x| ~ 2.
    x = np.linspace(-4.0, 4.0, 81, dtype=np.float32)
    expected = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    # torch's float32 erf loses ~1e-6 in the far negative tail; jax's is closer to the exact value.
    np.testing.assert_allclose(np.asarray(layers.gelu(x)), expected, atol=1e-6)
    self.assertGreater(np.abs(np.asarray(jax.nn.gelu(x, approximate=True)) - expected).max(), 1e-4)


class ModelContractTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_finite_and_defaults(self):
    cfg = tiny_config(cluster_size=4)
    model = model_lib.MultimodalMMDiT(cfg)
    tokens, latents, _, _, mask = make_inputs(cfg, batch=2, seq_len=10)
    params = model.init(jax.random.key(0), tokens, latents)['params']
    apply = self.variant(model.apply)
    text_logits, latent_pred, cluster_logits = apply({'params': params}, tokens, latents, None, None, mask)
    chex.assert_shape(text_logits, (2, 10, cfg.vocab_size))
    chex.assert_shape(cluster_logits, (2, 10, cfg.vocab_size))
    chex.assert_shape(latent_pred, (2, 1, cfg.latent_dim))
    chex.assert_tree_all_finite((text_logits, latent_pred, cluster_logits))
    # Missing timesteps mean zeros and a missing mask means all true.
    zeros = jnp.zeros(2)
    explicit = apply({'params': params}, tokens, latents, zeros, zeros, jnp.ones_like(mask))
    implicit = apply({'params': params}, tokens, latents)
    chex.assert_trees_all_close(explicit, implicit, atol=0, rtol=0)

  def test_padding_tokens_do_not_leak(self):
    # Pitfall guard for the attention mask: what sits under mask = 0 must not change any output at
    # unmasked positions, nor the latent prediction.
    cfg = tiny_config()
    torch_model, params = build_pair(cfg)
    tokens, latents, text_t, latent_t, mask = make_inputs(cfg, batch=2, seq_len=12)
    mask[1, 7:] = False
    other = tokens.copy()
    other[1, 7:] = (tokens[1, 7:] + 11) % cfg.vocab_size
    a = run_flax(cfg, params, (tokens, latents, text_t, latent_t, mask))
    b = run_flax(cfg, params, (other, latents, text_t, latent_t, mask))
    np.testing.assert_allclose(a[0][:, :7], b[0][:, :7], atol=1e-6)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)
    # ... while the padded tokens do change outputs when unmasked (the check above can fail).
    c = run_flax(cfg, params, (other, latents, text_t, latent_t, np.ones_like(mask)))
    self.assertGreater(np.abs(c[1] - a[1]).max(), 1e-4)

  def test_dropout_needs_rng_and_changes_latent_pred(self):
    cfg = tiny_config(dropout=0.5)
    model = model_lib.MultimodalMMDiT(cfg)
    tokens, latents, *_ = make_inputs(cfg, batch=2)
    params = model.init(jax.random.key(0), tokens, latents)['params']
    eval_out = model.apply({'params': params}, tokens, latents)
    train_out = model.apply(
      {'params': params}, tokens, latents, deterministic=False, rngs={'dropout': jax.random.key(1)}
    )
    chex.assert_trees_all_close(eval_out[0], train_out[0])  # dropout only sits in the latent head
    self.assertGreater(float(jnp.abs(eval_out[1] - train_out[1]).max()), 1e-6)

  def test_bfloat16_compute_keeps_float32_params_and_stays_close(self):
    cfg = tiny_config()
    torch_model, params = build_pair(cfg)
    inputs = make_inputs(cfg)
    full = run_flax(cfg, params, inputs)
    half = run_flax(tiny_config(dtype='bfloat16'), params, inputs)
    chex.assert_tree_all_finite(half)
    np.testing.assert_allclose(half[1], full[1], atol=0.15)
    # The text logits too (attention, MLP and head in bfloat16): a few bfloat16 ulps of their scale.
    scale = float(np.abs(full[0]).max())
    np.testing.assert_allclose(half[0], full[0], atol=0.02 * scale)  # measured: 0.009 * scale
    model = model_lib.MultimodalMMDiT(tiny_config(dtype='bfloat16'))
    fresh = model.init(jax.random.key(0), inputs[0], inputs[1])['params']
    self.assertEqual({x.dtype for x in jax.tree_util.tree_leaves(fresh)}, {jnp.dtype(jnp.float32)})

  @parameterized.parameters(
    ('hidden_size', 0),
    ('n_blocks', -1),
    ('vocab_size', 0),
    ('dtype', 'float16'),
    ('dropout', 1.0),
    ('cluster_size', -3),
    ('remat_policy', 'sometimes'),
    ('scan_unroll', -1),
    ('scan_unroll', 1.5),
    ('scan_unroll', True),
  )
  def test_bad_config_value_is_named(self, key, value):
    cfg = tiny_config(**{key: value})
    with pytest.raises(ValueError, match=key):
      config_lib.validate_section('model', cfg)

  def test_the_heads_on_some_rows_of_the_backbone_are_those_rows_of_the_full_output(self):
    cfg = tiny_config(cluster_size=5)
    _, params = build_pair(cfg, seed=3)
    inputs = make_inputs(cfg, batch=4)
    model = model_lib.MultimodalMMDiT(cfg)
    full = run_flax(cfg, params, inputs)
    parts = model_lib.MultimodalMMDiT

    def odd_rows(variables, *args):
      text_out, latent_out = model.apply(variables, *args, method=parts.backbone)
      return (
        model.apply(variables, text_out[1::2], method=parts.text_logits),
        model.apply(variables, latent_out, method=parts.latent_head),
        model.apply(variables, text_out[1::2], method=parts.cluster_logits),
      )

    odd = run_flax(cfg, params, inputs, jax.jit(odd_rows))
    chex.assert_shape(odd[0], (2,) + full[0].shape[1:])
    np.testing.assert_allclose(odd[0], full[0][1::2], atol=1e-6, rtol=0)
    np.testing.assert_allclose(odd[2], full[2][1::2], atol=1e-6, rtol=0)
    np.testing.assert_allclose(odd[1], full[1], atol=1e-6, rtol=0)  # the latent head sees every row

  def test_text_heads_switched_off_at_run_time_give_zeros_and_the_same_latent(self):
    cfg = tiny_config(cluster_size=5)
    _, params = build_pair(cfg, seed=3)
    inputs = make_inputs(cfg, batch=2)
    model = model_lib.MultimodalMMDiT(cfg)
    full = run_flax(cfg, params, inputs)

    def switched(on, variables, *args):
      [(logits, latent_pred)] = passes.run_passes(
        model, variables['params'], [passes.ModelPass(*args)], deterministic=True, dropout_key=None, text_heads_on=on
      )
      return logits, latent_pred[:, None, :]

    switched = jax.jit(switched)
    on = run_flax(cfg, params, inputs, functools.partial(switched, jnp.array(True)))
    off = run_flax(cfg, params, inputs, functools.partial(switched, jnp.array(False)))
    chex.assert_trees_all_close(on, full[:2], atol=1e-6, rtol=0)
    for got, expected in zip(off, full):
      chex.assert_equal_shape((got, expected))
    np.testing.assert_array_equal(off[0], 0.0)
    np.testing.assert_allclose(off[1], full[1], atol=1e-6, rtol=0)

  def test_bad_shapes_are_named(self):
    cfg = tiny_config()
    model = model_lib.MultimodalMMDiT(cfg)
    with pytest.raises(ValueError, match='max_seq_len'):
      model.init(jax.random.key(0), jnp.zeros((1, cfg.max_seq_len + 1), jnp.int32), jnp.zeros((1, 8)))
    with pytest.raises(ValueError, match='latent_dim'):
      model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 9)))

  @parameterized.parameters(
    dict(remat_policy='full'), dict(remat_policy='dots'), dict(scan_unroll=2), dict(scan_unroll=2, remat_policy='dots')
  )
  def test_remat_and_unrolling_give_the_same_gradients(self, **variant):
    cfg = tiny_config(n_blocks=2)
    inputs = make_inputs(cfg, batch=2)
    _, params = build_pair(cfg)

    def loss(p, c):
      out = model_lib.MultimodalMMDiT(c).apply({'params': p}, *inputs)
      return jnp.sum(out[0] ** 2) + jnp.sum(out[1] ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    with jax.default_matmul_precision('highest'):
      g_plain = grad(params, ml_collections.FrozenConfigDict(cfg))
      g_variant = grad(params, ml_collections.FrozenConfigDict(tiny_config(n_blocks=2, **variant)))
    chex.assert_trees_all_close(g_plain, g_variant, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
  'platform, n_blocks, scan_unroll, expected',
  [('cpu', 2, 0, 2), ('cpu', 24, 0, 4), ('tpu', 24, 0, 1), ('gpu', 2, 0, 1), ('cpu', 24, 3, 3), ('tpu', 8, 8, 8)],
)
def test_scan_unroll_auto_resolves_by_platform(platform, n_blocks, scan_unroll, expected):
  config = config_lib.default_config()
  config.model.update(n_blocks=n_blocks, scan_unroll=scan_unroll, dtype='bfloat16')
  resolved = model_platform.resolve(config_lib.finalize(config), platform)
  assert resolved.model.scan_unroll == expected
  assert resolved.model.attention != 'auto' and isinstance(resolved, ml_collections.FrozenConfigDict)
