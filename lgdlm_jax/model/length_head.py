"""The length head: a sentence's token count from its clean latent (model.length_head).

    logits_BxS = LengthHead(max_seq_len, hidden_size, dtype)(latents_BxD)   # class i = length i + 1

It has no counterpart in the reference, whose L2T learns where a sentence ends from the pad tail
(its cross-entropy averages over padding too). A packed row has no pad tail, so a run with
loss.text_positions='valid' learns the length here and its L2T sampler decodes that many tokens.
It reads the CLEAN latent, not the backbone's latent token: in an L2T pass that token attends to
its segment's [MASK] tokens, whose count is the answer.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgdlm_jax.model import layers


class LengthHead(nn.Module):
  """Linear(D, H) -> exact GELU -> Linear(H, S): logits [..., S] over lengths 1..S (float32)."""

  max_seq_len: int
  hidden_size: int
  dtype: Any

  @nn.compact
  def __call__(self, latents_BxD: jax.Array) -> jax.Array:
    latents_BxD = latents_BxD.astype(jnp.float32)
    x = layers.torch_linear(self.hidden_size, latents_BxD.shape[-1], name='hidden', dtype=self.dtype)(latents_BxD)
    x = layers.torch_linear(self.max_seq_len, self.hidden_size, name='logits', dtype=self.dtype)(layers.gelu(x))
    return x.astype(jnp.float32)


def predicted_lengths(logits_BxS: jax.Array) -> jax.Array:
  """The most likely length (1..S) of each sample, int32."""
  return jnp.argmax(logits_BxS, axis=-1).astype(jnp.int32) + 1
