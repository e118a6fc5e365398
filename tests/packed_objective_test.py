"""The objective on packed rows equals the objective on the same samples unpacked ('valid' text positions):
every term, the total and the gradient (joint and pass by pass); the length head's term; 'all' refuses
packed rows."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.errors import ConfigError
from lgdlm_jax.objective import cycle_vae
from lgdlm_jax.objective import draws as draws_lib
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.objective.cycle_schedule import ALL_TERMS
from lgdlm_jax.training import gradients
from tests.helpers.runs import tiny_config

SEQ_LEN, LATENT_DIM, K = 12, 8, 3
# Row 0: K segments and padding after them; row 1: one segment.
ROWS = ((3, 5, 2), (4,))


def _config(**overrides):
  overrides = {
    'loss.text_positions': 'valid',
    'model.length_head': True,
    'model.max_seq_len': SEQ_LEN,
    'model.latent_dim': LATENT_DIM,
    'loss.cycle_latent_weight': 0.5,
    'loss.length_loss_weight': 0.7,
    **overrides,
  }
  return config_lib.finalize(tiny_config(**overrides))


def _samples(rows):
  """Each sample's tokens, latent and draws (t_lat, noise, t_lat2, noise2)."""
  rng = np.random.default_rng(0)
  lengths = [n for row in rows for n in row]
  return [
    dict(
      tokens=rng.integers(4, 97, n).astype(np.int32),
      latent=rng.standard_normal(LATENT_DIM).astype(np.float32),
      t_lat=np.float32(rng.uniform(0.05, 0.95)),
      noise=rng.standard_normal(LATENT_DIM).astype(np.float32),
      t_lat2=np.float32(rng.uniform(0.05, 0.95)),
      noise2=rng.standard_normal(LATENT_DIM).astype(np.float32),
    )
    for n in lengths
  ]


def _unpacked(samples):
  ids = np.zeros((len(samples), SEQ_LEN), np.int32)
  mask = np.zeros((len(samples), SEQ_LEN), bool)
  for i, s in enumerate(samples):
    ids[i, : len(s['tokens'])], mask[i, : len(s['tokens'])] = s['tokens'], True
  batch = dict(input_ids=ids, attention_mask=mask, latent=np.stack([s['latent'] for s in samples]))
  draws = {k: np.stack([s[k] for s in samples]) for k in ('t_lat', 'noise', 't_lat2', 'noise2')}
  return batch, draws


def _packed(samples, rows):
  """The packed batch of the packed-rows contract, and each segment's draws in its slot (empty slots:
  values that must not matter)."""
  b = len(rows)
  batch = dict(
    input_ids=np.zeros((b, SEQ_LEN), np.int32),
    attention_mask=np.zeros((b, SEQ_LEN), bool),
    segment_ids=np.zeros((b, SEQ_LEN), np.int32),
    positions=np.zeros((b, SEQ_LEN), np.int32),
    latent=np.zeros((b, K, LATENT_DIM), np.float32),
    latent_mask=np.zeros((b, K), bool),
    segment_lengths=np.zeros((b, K), np.int32),
  )
  draws = dict(
    t_lat=np.full((b, K), 0.5, np.float32),
    noise=np.full((b, K, LATENT_DIM), 3.0, np.float32),
    t_lat2=np.full((b, K), 0.25, np.float32),
    noise2=np.full((b, K, LATENT_DIM), -2.0, np.float32),
  )
  it = iter(samples)
  for r, row in enumerate(rows):
    start = 0
    for k, n in enumerate(row):
      s = next(it)
      span = slice(start, start + n)
      batch['input_ids'][r, span], batch['attention_mask'][r, span] = s['tokens'], True
      batch['segment_ids'][r, span], batch['positions'][r, span] = k + 1, np.arange(n)
      batch['latent'][r, k], batch['latent_mask'][r, k], batch['segment_lengths'][r, k] = s['latent'], True, n
      for name in draws:
        draws[name][r, k] = s[name]
      start += n
  return batch, draws


def _with_keys(draws):
  return dict(draws, sample_key=jax.random.key(5), dropout_key=jax.random.key(6))


@functools.cache
def _setup(attention: str = 'xla'):
  config = _config(**{'model.attention': attention, 'model.blockwise_block_size': 4})
  model = model_lib.MultimodalMMDiT(config.model)
  tokens = jnp.zeros((1, SEQ_LEN), jnp.int32)
  params = model.init(jax.random.key(0), tokens, jnp.zeros((1, LATENT_DIM)))['params']
  return config, model, options_lib.from_config(config), params


def _value_and_grad(params, batch, draws, *, model, options, mode):
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  with jax.default_matmul_precision('highest'):
    return gradients.value_and_grad(
      params, batch, _with_keys(draws), step=None, model=model, options=options, terms=ALL_TERMS, mode=mode
    )


def _assert_same(packed, unpacked):
  (loss_p, metrics_p), grads_p = packed
  (loss_u, metrics_u), grads_u = unpacked
  assert set(metrics_p) == set(metrics_u)
  for name in metrics_u:
    np.testing.assert_allclose(metrics_p[name], metrics_u[name], rtol=1e-5, atol=1e-5, err_msg=name)
  np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5, atol=1e-5)
  for path, g_u in jax.tree_util.tree_leaves_with_path(grads_u):
    g_p = functools.reduce(lambda t, k: t[k.key], path, grads_p)
    np.testing.assert_allclose(g_p, g_u, rtol=1e-4, atol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('mode', ['joint', 'sequential'])
@pytest.mark.parametrize('rows', [ROWS, ROWS[:1]], ids=['B2', 'B1'])
def test_packed_equals_unpacked(mode, rows):
  _, model, options, params = _setup()
  samples = _samples(rows)
  packed = _value_and_grad(params, *_packed(samples, rows), model=model, options=options, mode=mode)
  unpacked = _value_and_grad(params, *_unpacked(samples), model=model, options=options, mode=mode)
  assert {'cycle_text_loss', 'cycle_latent_loss', 'length_loss'} <= set(packed[0][1])
  _assert_same(packed, unpacked)


def test_blockwise_packed_equals_xla_unpacked():
  _, model, options, params = _setup('blockwise')
  _, xla_model, _, _ = _setup('xla')
  samples = _samples(ROWS)
  packed = _value_and_grad(params, *_packed(samples, ROWS), model=model, options=options, mode='joint')
  unpacked = _value_and_grad(params, *_unpacked(samples), model=xla_model, options=options, mode='joint')
  _assert_same(packed, unpacked)


def test_empty_slots_do_not_matter():
  """What an empty slot holds (latent, draws) changes no term."""
  _, model, options, params = _setup()
  samples = _samples(ROWS)
  batch, draws = _packed(samples, ROWS)
  (loss, _), _ = _value_and_grad(params, batch, draws, model=model, options=options, mode='joint')
  batch['latent'][1, 1:] = 9.0
  draws['t_lat'][1, 1:] = 0.9
  (loss2, _), _ = _value_and_grad(params, batch, draws, model=model, options=options, mode='joint')
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)


def test_packed_batch_with_all_is_a_config_error():
  _, model, _, params = _setup()
  options = options_lib.from_config(config_lib.finalize(tiny_config(**{'model.max_seq_len': SEQ_LEN})))
  batch, draws = _packed(_samples(ROWS), ROWS)
  with pytest.raises(ConfigError, match='loss.text_positions'):
    cycle_vae.cycle_vae_loss(params, batch, _with_keys(draws), step=None, model=model, options=options)


def test_text_positions_and_length_head_must_agree():
  with pytest.raises(ConfigError, match='model.length_head'):
    config_lib.finalize(tiny_config(**{'loss.text_positions': 'valid'}))
  with pytest.raises(ConfigError, match='loss.length_loss_weight'):
    config_lib.finalize(tiny_config(**{'loss.length_loss_weight': 2.0}))


def test_length_term_against_hand_computation():
  config, model, options, params = _setup()
  samples = _samples(ROWS)
  batch, draws = _unpacked(samples)
  values, _ = cycle_vae.cycle_vae_terms(
    params, batch, _with_keys(draws), model=model, options=options, terms=ALL_TERMS, deterministic=True
  )
  head = jax.tree.map(np.asarray, params['length_head'])
  hidden = batch['latent'].astype(np.float64) @ head['hidden']['kernel'] + head['hidden']['bias']
  hidden = 0.5 * hidden * (1.0 + np.vectorize(__import__('math').erf)(hidden / np.sqrt(2.0)))
  logits = hidden @ head['logits']['kernel'] + head['logits']['bias']
  assert logits.shape == (len(samples), config.model.max_seq_len)
  lengths = np.array([len(s['tokens']) for s in samples])
  log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True))
  log_probs -= logits.max(-1, keepdims=True)
  expected = -np.mean(log_probs[np.arange(len(samples)), lengths - 1])
  np.testing.assert_allclose(values['length_loss'], expected, rtol=1e-5)


def test_packed_draws_are_per_segment():
  _, _, options, _ = _setup()
  batch, _ = _packed(_samples(ROWS), ROWS)
  draws = draws_lib.draws_for_batch(jax.random.key(0), batch, LATENT_DIM, options)
  assert draws['t_lat'].shape == draws['t_lat2'].shape == (2, K)
  assert draws['noise'].shape == draws['noise2'].shape == (2, K, LATENT_DIM)
