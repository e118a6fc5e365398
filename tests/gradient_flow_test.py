"""Gradient flow through the cycle objective, per parameter array and per loss term.

Every parameter array must get a finite, non-zero gradient from the full objective, except:
- the cluster head (text_head_clusters): the objective never reads its logits;
- rows of the token embedding whose ids occur in no pass at a position the attention mask keeps
  (the batch's ids there, the [MASK] id of the L2T inputs and the cycle-latent pass's pseudo tokens
  there do occur; a padded position of a T2L pass reaches nothing the loss reads);
- rows of the position embedding beyond the batch's sequence length S.
And each term must reach what it trains and nothing it must not: the T2L terms (base and cycle
latent) the latent head but not the text head; the L2T terms (base and cycle text) the text head
but not the latent head: with cycle_stop_grad_latent, the cycle-text term gets no gradient through
the round-1 latent estimate (tests/losses_test.py shows the latent head's gradient changing when
the stop is lifted).
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.model import passes
from lgdlm_jax.objective import cycle_schedule
from lgdlm_jax.objective import cycle_vae
from lgdlm_jax.objective import draws as draws_lib
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.objective import terms as terms_lib

TERMS = ('base_t2l_latent_loss', 'base_l2t_text_loss', 'cycle_text_loss', 'cycle_latent_loss')
BATCH, SEQ_LEN, MAX_SEQ_LEN, VOCAB, MASK_ID = 4, 10, 16, 97, 5
TOKEN_EMBED = ('text_encoder', 'token_embed', 'embedding')
POSITION_EMBED = ('text_encoder', 'position_embed')


def make_config(num_residual_streams):
  config = config_lib.default_config()
  config.model.update(
    vocab_size=VOCAB,
    hidden_size=32,
    n_blocks=1,
    cond_dim=32,
    max_seq_len=MAX_SEQ_LEN,
    latent_dim=8,
    num_residual_streams=num_residual_streams,
    cluster_size=4,
  )
  config.tokenizer.update(vocab_size=VOCAB, mask_token_id=MASK_ID)
  config.loss.update(
    latent_loss_weight=0.1, cycle_text_weight=1.0, cycle_latent_weight=1.0, cycle_stop_grad_latent=True
  )
  return config_lib.finalize(config)


@functools.cache
def term_gradients(num_residual_streams):
  """({term: flat gradient}, the ids the passes feed the embedding where the mask keeps them) for
  one seeded batch."""
  config = make_config(num_residual_streams)
  model = model_lib.MultimodalMMDiT(config.model)
  rng = np.random.default_rng(0)
  # Ids 20..59 only, so that most of the vocabulary is absent from the batch.
  batch = dict(
    input_ids=jnp.asarray(rng.integers(20, 60, (BATCH, SEQ_LEN)), jnp.int32),
    attention_mask=jnp.asarray(np.arange(SEQ_LEN)[None] < rng.integers(6, SEQ_LEN + 1, (BATCH, 1))),
    latent=jnp.asarray(rng.standard_normal((BATCH, config.model.latent_dim)), jnp.float32),
  )
  batch['attention_mask'] = batch['attention_mask'].at[0].set(True)
  params = model.init(jax.random.key(0), batch['input_ids'], batch['latent'])['params']
  # Away from the init, where zero-initialised layers (the adaptive norms' modulation, the heads'
  # biases) would block gradients that training opens within its first step.
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  options = options_lib.from_config(config)
  draws = draws_lib.sample_draws(jax.random.key(1), BATCH, config.model.latent_dim, options)

  def weighted(p, weights):
    values, _ = cycle_vae.cycle_vae_terms(
      p, batch, draws, model=model, options=options, terms=cycle_schedule.ALL_TERMS, deterministic=True
    )
    return sum(w * values[name] for w, name in zip(weights, TERMS))

  def compute(p):
    grads = jax.vmap(jax.grad(weighted), in_axes=(None, 0))(p, jnp.eye(len(TERMS)))
    logits, _ = passes.apply_model(
      model, p, jnp.full_like(batch['input_ids'], MASK_ID), batch['latent'], 1.0, 0.0, batch['attention_mask']
    )
    return grads, terms_lib.sample_pseudo_tokens(logits, 'argmax', draws['sample_key'])

  grads, pseudo_tokens = jax.jit(compute)(params)
  flat = flax.traverse_util.flatten_dict(jax.device_get(grads))
  per_term = {name: {path: g[i] for path, g in flat.items()} for i, name in enumerate(TERMS)}
  kept = np.asarray(batch['attention_mask'])
  fed_ids = {MASK_ID} | {int(i) for ids in (batch['input_ids'], pseudo_tokens) for i in np.asarray(ids)[kept]}
  return per_term, fed_ids


def full_objective(per_term, config):
  weights = (config.loss.latent_loss_weight, 1.0, config.loss.cycle_text_weight, config.loss.cycle_latent_weight)
  return {path: sum(w * per_term[name][path] for w, name in zip(weights, TERMS)) for path in per_term[TERMS[0]]}


def nonzero(g):
  return bool(np.any(g != 0.0))


def heads(per_term, name):
  """(latent head gradient is non-zero, text head gradient is non-zero) for one term."""
  g = per_term[name]
  latent = any(nonzero(v) for path, v in g.items() if path[0].startswith('latent_head'))
  return latent, nonzero(g[('text_head', 'kernel')])


@pytest.mark.parametrize('streams', [1, pytest.param(2, marks=pytest.mark.slow)])
def test_every_array_gets_a_gradient_except_the_stated_ones(streams):
  # R = 2 (manifold-constrained hyper-connections, every shipped config) is slow to compile on two
  # CPU cores (~25 s) but its mixing parameters are the likeliest to be cut off from the loss.
  per_term, fed_ids = term_gradients(streams)
  grads = full_objective(per_term, make_config(streams))
  for path, g in grads.items():
    assert np.all(np.isfinite(g)), path
  unused = sorted(p for p, g in grads.items() if not nonzero(g))
  assert unused == [('text_head_clusters', 'bias'), ('text_head_clusters', 'kernel')]
  rows_with_gradient = {i for i, row in enumerate(grads[TOKEN_EMBED]) if nonzero(row)}
  assert rows_with_gradient == fed_ids
  assert len(fed_ids) < VOCAB // 2  # the check above could fail
  positions = grads[POSITION_EMBED][0]
  assert all(nonzero(row) for row in positions[:SEQ_LEN]) and not nonzero(positions[SEQ_LEN:])


def test_each_term_reaches_the_head_it_trains_and_not_the_other():
  per_term, _ = term_gradients(1)
  assert heads(per_term, 'base_t2l_latent_loss') == (True, False)
  assert heads(per_term, 'cycle_latent_loss') == (True, False)  # pseudo tokens carry no gradient
  assert heads(per_term, 'base_l2t_text_loss') == (False, True)
  # Stopped at the round-1 latent: nothing flows back into the T2L pass that made it.
  assert heads(per_term, 'cycle_text_loss') == (False, True)
  for name in TERMS:
    assert nonzero(per_term[name][('conditioning', 'combine_0', 'kernel')]), name
