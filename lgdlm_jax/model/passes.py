"""Calling the model on whole batches: several independent passes as one call, and single passes.

Everything above the model (the objective, the samplers, evaluation) calls it through here:

    outputs = run_passes(model, params, [ModelPass(...), ModelPass(...)], deterministic=True, dropout_key=None)
    text_logits_BxSxV, latent_pred_BxD = apply_model(model, params, tokens_BxS, latents_BxD, 1.0, 0.0, mask_BxS)
"""

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Mapping[str, Any]


class ModelPass(NamedTuple):
  """The inputs of one model pass over the batch."""
  tokens_BxS: jax.Array
  latents_BxD: jax.Array
  text_t_B: jax.Array
  latent_t_B: jax.Array
  mask_BxS: jax.Array | None  # None: no padding (every pass of one run_passes call alike)


def interleave(*xs_B: jax.Array) -> jax.Array:
  """[B,...] x P -> [B*P,...] with row b*P + p = xs[p][b]."""
  return jnp.stack(xs_B, axis=1).reshape((-1,) + xs_B[0].shape[1:])


def run_passes(model: nn.Module, params: Params, passes: Sequence[ModelPass], *, deterministic: bool,
               dropout_key: jax.Array | None,
               text_logits_wanted: Sequence[bool] | None = None,
               text_heads_on: jax.Array | None = None) -> list[tuple[jax.Array | None, jax.Array]]:
  """Independent passes of equal batch size B as ONE model call on a batch of P*B.

  Returns (text_logits [B,S,V], latent_pred [B,D]) per pass, in order; the model's single latent
  token is squeezed away. Examples never interact inside the model, so this equals separate calls.
  The passes are interleaved per example (row b*P + p) rather than laid end to end: with the
  batch axis sharded over devices, each device's rows of the joint batch are then exactly its own
  rows of every pass, so joining and splitting are local reshapes, never cross-device copies.

  text_logits_wanted[p] = False: pass p's text logits are None. When exactly one pass wants them,
  the model's text heads run on that pass's rows only (a strided slice of the joint batch);
  otherwise they run on every row and the unwanted logits are dropped. text_heads_on (a traced
  bool) instead decides at run time whether the text heads run at all (zeros where they do not).

  Why joined: one call per pass lets XLA also drop the last block's text branch of a pass whose
  text logits are unused (with the blocks unrolled), which ran a CPU train step 7% faster (7.3
  against 7.8 s, H=512, 4 blocks), but each pass is then compiled separately: the tiny test
  model's train step took 23 s to compile against 15 s, and a scanned deep model gains nothing.
  """
  num_passes = len(passes)
  batch_size = passes[0].tokens_BxS.shape[0]
  if any(p.tokens_BxS.shape[0] != batch_size for p in passes):
    raise ValueError(f'passes differ in batch size: {[p.tokens_BxS.shape[0] for p in passes]}')
  wanted = [True] * num_passes if text_logits_wanted is None else [bool(w) for w in text_logits_wanted]
  if len(wanted) != num_passes:
    raise ValueError(f'text_logits_wanted has {len(wanted)} entries for {num_passes} passes')
  only_pass = wanted.index(True) if sum(wanted) == 1 and num_passes > 1 else None
  joined = jax.tree.map(interleave, *passes)
  options = dict(rngs={} if deterministic else {'dropout': dropout_key})
  if only_pass is not None:
    options['text_head_rows'] = slice(only_pass, None, num_passes)
  if text_heads_on is not None:
    options['text_heads_on'] = text_heads_on
  outputs = model.apply({'params': params}, joined.tokens_BxS, joined.latents_BxD, joined.text_t_B,
                        joined.latent_t_B, attention_mask=joined.mask_BxS, deterministic=deterministic, **options)
  latent_pred_BxPxD = outputs[1][:, 0, :].reshape(batch_size, num_passes, -1)
  if only_pass is None:
    text_logits_BxPxSxV = outputs[0].reshape((batch_size, num_passes) + outputs[0].shape[1:])
    text_logits = [text_logits_BxPxSxV[:, p] if wanted[p] else None for p in range(num_passes)]
  else:
    text_logits = [outputs[0] if p == only_pass else None for p in range(num_passes)]
  return [(text_logits[p], latent_pred_BxPxD[:, p]) for p in range(num_passes)]


def apply_model(model: nn.Module, params: Params, tokens_BxS: jax.Array, latents_BxD: jax.Array,
                text_t: float | jax.Array, latent_t: float | jax.Array,
                mask_BxS: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """One deterministic pass with scalar timesteps: (text_logits [B,S,V], latent_pred [B,D])."""
  batch = tokens_BxS.shape[0]
  full_B = lambda t: jnp.full((batch,), t, jnp.float32)
  passes = [ModelPass(tokens_BxS, latents_BxD, full_B(text_t), full_B(latent_t), mask_BxS)]
  return run_passes(model, params, passes, deterministic=True, dropout_key=None)[0]
