"""Blockwise attention holds nothing S x S-sized: not alone, not in the model's gradient, not on packed rows.

XLA hoists loop-invariant work out of a scan: a key-validity (or segment) mask built outside a
block's iteration becomes every block's mask at once, [blocks, B, H, S, block], S x S in size. The
compiled program's shapes tell: with S = 8192 and blocks of 128 keys, one block's scores are 8 heads
x 8193 x 128 ~ S^2 / 8 elements and the largest O(S) activation (q, k, v: S x 1536) ~ S^2 / 5; a
hoisted mask is S^2 or more (8 S^2 with the heads), so anything from S^2 / 2 up is one.
"""

import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from lgdlm_jax import model as model_lib
from lgdlm_jax.model import passes
from lgdlm_jax.model.segments import PackedSegments
from tests.helpers import models

SEQ_LEN = 8192
BLOCK = 128
SHAPE = re.compile(r'\b(?:pred|[fsu](?:8|16|32|64)|bf16)\[([0-9,]+)\]')


def largest_buffer(compiled_text: str) -> tuple[int, str]:
  """(elements, shape) of the largest array shape in a compiled HLO module's text."""
  sizes = [(math.prod(int(d) for d in m.group(1).split(',')), m.group(0)) for m in SHAPE.finditer(compiled_text)]
  return max(sizes)


@pytest.mark.parametrize('packed', [False, True])
def test_the_blockwise_model_gradient_holds_no_s_by_s_buffer(packed):
  cfg = models.tiny_config(
    hidden_size=16, cond_dim=16, n_blocks=1, num_residual_streams=1, max_seq_len=SEQ_LEN, vocab_size=11
  )
  cfg.update(attention='blockwise', blockwise_block_size=BLOCK)
  model = model_lib.MultimodalMMDiT(ml_collections.FrozenConfigDict(cfg))
  tokens, mask = jnp.zeros((1, SEQ_LEN), jnp.int32), jnp.ones((1, SEQ_LEN), bool)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, jnp.zeros((1, cfg.latent_dim)))['params'])
  if packed:
    ids = jnp.repeat(jnp.arange(1, 5, dtype=jnp.int32), SEQ_LEN // 4)[None]
    segments = PackedSegments(ids, jnp.tile(jnp.arange(SEQ_LEN // 4, dtype=jnp.int32), 4)[None], jnp.ones((1, 4), bool))
    model_pass = passes.ModelPass(
      tokens, jnp.zeros((1, 4, cfg.latent_dim)), jnp.zeros((1, 4)), jnp.zeros((1, 4)), mask, segments
    )
  else:
    model_pass = passes.ModelPass(tokens, jnp.zeros((1, cfg.latent_dim)), jnp.zeros((1,)), jnp.zeros((1,)), mask)

  def loss(p):
    [(logits, latent)] = passes.run_passes(model, p, [model_pass], deterministic=True, dropout_key=None)
    return jnp.sum(logits) + jnp.sum(latent)

  elements, shape = largest_buffer(jax.jit(jax.grad(loss)).lower(params).compile().as_text())
  assert elements < SEQ_LEN**2 // 2, f'{shape} holds {elements / SEQ_LEN**2:.2f} S^2 elements'
