"""The model on packed rows: every segment gets exactly what its sample gets alone, on every backend.

Samples of different lengths run alone (unpacked, padded, `xla`) and packed into rows (1 segment
per row, K per row, padding inside rows, empty latent slots; B = 1 and 2) with different timesteps
per segment: text logits on each segment's real tokens and latent predictions within 1e-5, and the
parameter gradients of a scalar of those outputs within 1e-4 per tensor. float32, 'highest'.
"""

import jax
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lgdlm_jax import model as model_lib
from lgdlm_jax.model import passes
from lgdlm_jax.model.segments import PackedSegments
from tests.helpers import models

TOL = 1e-5
GRAD_TOL = 1e-4
SEQ_LEN = 16
NUM_SLOTS = 3  # K
LENGTHS = (5, 3, 6)
# Rows of sample indices: B = 2 with 2 segments and 1 segment (empty slots, padding), B = 1 with K segments.
LAYOUTS = {'two_rows': ((0, 1), (2,)), 'one_row_k_segments': ((0, 1, 2),)}


def config(**overrides):
  cfg = models.tiny_config(hidden_size=32, cond_dim=24, n_blocks=1, max_seq_len=SEQ_LEN, **overrides)
  return ml_collections.FrozenConfigDict(cfg)


def params_of(cfg, seed=0):
  """Initial params moved off their init (several modulations start at exactly 0 or 1)."""
  model = model_lib.MultimodalMMDiT(cfg)
  tokens = jnp.zeros((1, SEQ_LEN), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(seed), tokens, jnp.zeros((1, cfg.latent_dim)))['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def samples(cfg, seed=0):
  """Per sample: tokens [n], latent [D], text t, latent t."""
  rng = np.random.default_rng(seed)
  return [
    (
      rng.integers(1, cfg.vocab_size, n).astype(np.int32),
      rng.standard_normal(cfg.latent_dim).astype(np.float32),
      np.float32(rng.uniform()),
      np.float32(rng.uniform()),
    )
    for n in LENGTHS
  ]


def unpacked_pass(data):
  """Every sample alone in its own row, padded to SEQ_LEN."""
  tokens = np.zeros((len(data), SEQ_LEN), np.int32)
  mask = np.zeros((len(data), SEQ_LEN), bool)
  for i, (toks, *_) in enumerate(data):
    tokens[i, : len(toks)], mask[i, : len(toks)] = toks, True
  latents, text_t, latent_t = (np.stack([d[j] for d in data]) for j in (1, 2, 3))
  return passes.ModelPass(tokens, latents, text_t, latent_t, mask)


def packed_pass(data, rows):
  """The samples packed into rows as the packed-rows contract lays them out; where[i] = (row, slot, offset)."""
  batch, dim = len(rows), data[0][1].shape[0]
  tokens, segment_ids, positions = (np.zeros((batch, SEQ_LEN), np.int32) for _ in range(3))
  latents = np.zeros((batch, NUM_SLOTS, dim), np.float32)
  text_t, latent_t = np.zeros((batch, NUM_SLOTS), np.float32), np.zeros((batch, NUM_SLOTS), np.float32)
  latent_mask = np.zeros((batch, NUM_SLOTS), bool)
  where = {}
  for r, row in enumerate(rows):
    offset = 0
    for k, i in enumerate(row):
      toks, latent, tt, lt = data[i]
      span = slice(offset, offset + len(toks))
      tokens[r, span], segment_ids[r, span], positions[r, span] = toks, k + 1, np.arange(len(toks))
      latents[r, k], text_t[r, k], latent_t[r, k], latent_mask[r, k] = latent, tt, lt, True
      where[i] = (r, k, offset)
      offset += len(toks)
  segments = PackedSegments(segment_ids, positions, latent_mask)
  return passes.ModelPass(tokens, latents, text_t, latent_t, segment_ids > 0, segments), where


def per_sample(outputs, where=None):
  """[(logits on the sample's real tokens [n, V], latent prediction [D])] in sample order."""
  logits, latent = outputs
  if where is None:
    return [(logits[i, :n], latent[i]) for i, n in enumerate(LENGTHS)]
  return [
    (logits[r, o : o + n], latent[r, k]) for n, (r, k, o) in zip(LENGTHS, (where[i] for i in range(len(LENGTHS))))
  ]


def scalar(outs):
  """A scalar that weighs every valid output differently."""
  return sum(
    jnp.sum(jnp.sin(lg) * (i + 1)) + jnp.sum(lt * jnp.cos(jnp.arange(lt.size))) for i, (lg, lt) in enumerate(outs)
  )


def value_and_grads(cfg, params, model_pass, where=None):
  model = model_lib.MultimodalMMDiT(cfg)

  def loss(p):
    [outputs] = passes.run_passes(model, p, [model_pass], deterministic=True, dropout_key=None)
    outs = per_sample(outputs, where)
    return scalar(outs), outs

  with jax.default_matmul_precision('highest'):
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def assert_close(got, expected, tol, relative=False):
  for (path, e), g in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got)):
    e, g = np.asarray(e), np.asarray(g)
    scale = max(1.0, float(np.max(np.abs(e)))) if relative else 1.0
    np.testing.assert_allclose(g, e, atol=tol * scale, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def unpacked_xla():
  cfg = config(attention='xla')
  params = params_of(cfg)
  data = samples(cfg)
  return params, data, value_and_grads(cfg, params, unpacked_pass(data))


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
@pytest.mark.parametrize('backend, extra', [('xla', {}), ('blockwise', {'blockwise_block_size': 4})])
def test_packed_rows_equal_samples_alone_in_outputs_and_gradients(unpacked_xla, layout, backend, extra):
  params, data, ((_, expected), expected_grads) = unpacked_xla
  model_pass, where = packed_pass(data, LAYOUTS[layout])
  (_, got), grads = value_and_grads(config(attention=backend, **extra), params, model_pass, where)
  assert_close(got, expected, TOL)
  assert_close(grads, expected_grads, GRAD_TOL, relative=True)


@pytest.mark.slow  # the TPU interpret mode emulates the kernel's every grid step in Python
def test_packed_rows_on_splash_equal_samples_alone(unpacked_xla):
  params, data, ((_, expected), expected_grads) = unpacked_xla
  model_pass, where = packed_pass(data, LAYOUTS['two_rows'])
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ('data', 'fsdp'))
  with pltpu.force_tpu_interpret_mode(), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    (_, got), grads = value_and_grads(config(attention='splash', splash_block_size=128), params, model_pass, where)
  assert_close(got, expected, TOL)
  assert_close(grads, expected_grads, GRAD_TOL, relative=True)


@pytest.mark.parametrize('backend', ['xla', 'blockwise'])
def test_a_segment_sees_nothing_outside_itself(backend):
  cfg = config(attention=backend, blockwise_block_size=4)
  params = params_of(cfg, seed=3)
  data = samples(cfg, seed=3)
  model = model_lib.MultimodalMMDiT(cfg)
  rows = LAYOUTS['one_row_k_segments']
  run = lambda d: per_sample(
    passes.run_passes(model, params, [packed_pass(d, rows)[0]], deterministic=True, dropout_key=None)[0],
    packed_pass(d, rows)[1],
  )
  base = run(data)
  # Segment 2 (the middle one) gets other tokens, another latent and other timesteps.
  toks, latent, tt, lt = data[1]
  changed = run([data[0], ((toks + 7) % cfg.vocab_size, latent + 1.0, 1.0 - tt, 1.0 - lt), data[2]])
  for i in (0, 2):
    assert_close(changed[i], base[i], 1e-6)
  assert float(jnp.max(jnp.abs(changed[1][0] - base[1][0]))) > 1e-3
  assert float(jnp.max(jnp.abs(changed[1][1] - base[1][1]))) > 1e-3


def test_apply_model_on_packed_rows_gives_one_latent_per_slot(unpacked_xla):
  cfg = config(attention='xla')
  params, data, _ = unpacked_xla
  model_pass, _ = packed_pass(data, LAYOUTS['two_rows'])
  model = model_lib.MultimodalMMDiT(cfg)
  apply = jax.jit(
    lambda p, mp: passes.apply_model(model, p, mp.tokens_BxS, mp.latents_BxD, 0.5, 0.25, mp.mask_BxS, mp.segments)
  )
  logits, latent = apply(params, model_pass)
  assert logits.shape == (2, SEQ_LEN, cfg.vocab_size) and latent.shape == (2, NUM_SLOTS, cfg.latent_dim)
  # Padding tokens and empty slots are never read, but stay finite.
  assert bool(jnp.all(jnp.isfinite(logits))) and bool(jnp.all(jnp.isfinite(latent)))


def test_packed_latents_of_the_wrong_shape_are_named():
  cfg = config(attention='xla')
  model_pass, _ = packed_pass(samples(cfg), LAYOUTS['two_rows'])
  model = model_lib.MultimodalMMDiT(cfg)
  params = jax.eval_shape(lambda: params_of(cfg))
  with pytest.raises(ValueError, match=r'packed rows take latents \[B, K, D\]'):
    jax.eval_shape(
      lambda p: passes.apply_model(
        model, p, model_pass.tokens_BxS, model_pass.latents_BxD[:, 0], 0.5, 0.25, None, model_pass.segments
      ),
      params,
    )
