"""Calling the model on whole batches: several independent passes as one call, and single passes.

Everything above the model (the objective, the samplers, evaluation) calls it through here; the
objective's passes run the backbone and only the heads they read:

    outputs = run_passes(model, params, [ModelPass(...), ModelPass(...)], deterministic=True, dropout_key=None)
    text_logits_BxSxV, latent_pred_BxD = apply_model(model, params, tokens_BxS, latents_BxD, 1.0, 0.0, mask_BxS)

A pass over packed rows (lgdlm_jax.model.segments) carries its PackedSegments: its latents are
[B,K,D], its timesteps [B,K] (one per segment), and its latent prediction [B,K,D].
"""

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgdlm_jax.model.multimodal import MultimodalMMDiT
from lgdlm_jax.model.segments import PackedSegments

Params = Mapping[str, Any]


class ModelPass(NamedTuple):
  """The inputs of one model pass over the batch (packed rows: latents [B,K,D], timesteps [B,K])."""

  tokens_BxS: jax.Array
  latents_BxD: jax.Array
  text_t_B: jax.Array
  latent_t_B: jax.Array
  mask_BxS: jax.Array | None  # None: no padding (every pass of one run_passes call alike)
  segments: PackedSegments | None = None  # packed rows (every pass of one run_passes call alike)


def interleave(*xs_B: jax.Array) -> jax.Array:
  """[B,...] x P -> [B*P,...] with row b*P + p = xs[p][b]."""
  return jnp.stack(xs_B, axis=1).reshape((-1,) + xs_B[0].shape[1:])


def text_logits(
  model: nn.Module, params: Params, text_out_BxSxH: jax.Array, heads_on: jax.Array | None = None
) -> jax.Array:
  """The token logits [B,S,V] of the backbone's text stream.

  heads_on (a traced bool) decides at run time whether the vocabulary projection runs at all
  (zeros where it does not): one traced program that serves T2L and L2T passes alike (the
  pass-by-pass gradient) then pays for the projection only in the passes that read it.
  """
  project = lambda: model.apply({'params': params}, text_out_BxSxH, method=MultimodalMMDiT.text_logits)
  if heads_on is None:
    return project()
  zeros = lambda: jnp.zeros(text_out_BxSxH.shape[:-1] + (model.config.vocab_size,), jnp.float32)
  return jax.lax.cond(heads_on, project, zeros)


def run_passes(
  model: nn.Module,
  params: Params,
  passes: Sequence[ModelPass],
  *,
  deterministic: bool,
  dropout_key: jax.Array | None,
  text_logits_wanted: Sequence[bool] | None = None,
  text_heads_on: jax.Array | None = None,
) -> list[tuple[jax.Array | None, jax.Array]]:
  """Independent passes of equal batch size B as ONE model call on a batch of P*B.

  Returns (text_logits [B,S,V], latent_pred [B,D]) per pass, in order; the model's single latent
  token is squeezed away (packed passes: latent_pred [B,K,D], one per segment). Examples never
  interact inside the model, so this equals separate calls.
  The passes are interleaved per example (row b*P + p) rather than laid end to end: with the
  batch axis sharded over devices, each device's rows of the joint batch are then exactly its own
  rows of every pass, so joining and splitting are local reshapes, never cross-device copies.

  text_logits_wanted[p] = False: pass p's text logits are None. The text head runs only on the
  rows of the passes that want them: on one pass's rows (a strided slice of the joint batch) when
  exactly one does, on every row when several do, and not at all when none does. text_heads_on
  (a traced bool) further decides at run time whether it runs (see `text_logits`).

  Why joined: one call per pass would let XLA drop more of a pass's unused work, but compiles
  the model once per pass, and a scanned deep model gains nothing from it.
  """
  num_passes = len(passes)
  batch_size = passes[0].tokens_BxS.shape[0]
  if any(p.tokens_BxS.shape[0] != batch_size for p in passes):
    raise ValueError(f'passes differ in batch size: {[p.tokens_BxS.shape[0] for p in passes]}')
  wanted = [True] * num_passes if text_logits_wanted is None else [bool(w) for w in text_logits_wanted]
  if len(wanted) != num_passes:
    raise ValueError(f'text_logits_wanted has {len(wanted)} entries for {num_passes} passes')
  if len({p.segments is None for p in passes}) > 1:
    raise ValueError('passes mix packed (segments) and unpacked rows')
  joined = jax.tree.map(interleave, *passes)
  variables = {'params': params}
  text_out, latent_out = model.apply(
    variables,
    joined.tokens_BxS,
    joined.latents_BxD,
    joined.text_t_B,
    joined.latent_t_B,
    joined.mask_BxS,
    joined.segments,
    method=MultimodalMMDiT.backbone,
  )
  rngs = {} if deterministic else {'dropout': dropout_key}
  latent_pred = model.apply(variables, latent_out, deterministic, rngs=rngs, method=MultimodalMMDiT.latent_head)
  # [B*P, L, D] -> [B, P, D] (one latent token, squeezed) or [B, P, K, D] (packed rows).
  per_row = latent_pred[:, 0, :] if passes[0].segments is None else latent_pred
  latent_pred_BxPxD = per_row.reshape((batch_size, num_passes) + per_row.shape[1:])
  logits = [None] * num_passes
  if sum(wanted) == 1:
    only = wanted.index(True)
    logits[only] = text_logits(model, params, text_out[only::num_passes], text_heads_on)
  elif any(wanted):
    every_BxSxV = text_logits(model, params, text_out, text_heads_on)
    every_BxPxSxV = every_BxSxV.reshape((batch_size, num_passes) + every_BxSxV.shape[1:])
    logits = [every_BxPxSxV[:, p] if wanted[p] else None for p in range(num_passes)]
  return [(logits[p], latent_pred_BxPxD[:, p]) for p in range(num_passes)]


def length_logits(model: nn.Module, params: Params, latents_BxD: jax.Array) -> jax.Array:
  """The length head's logits [..., S] (class i = length i + 1) of clean latents [..., D]."""
  return model.apply({'params': params}, latents_BxD, method=MultimodalMMDiT.length_logits)


def apply_model(
  model: nn.Module,
  params: Params,
  tokens_BxS: jax.Array,
  latents_BxD: jax.Array,
  text_t: float | jax.Array,
  latent_t: float | jax.Array,
  mask_BxS: jax.Array | None,
  segments: PackedSegments | None = None,
) -> tuple[jax.Array, jax.Array]:
  """One deterministic pass of the whole model with scalar timesteps: (text_logits [B,S,V], latent_pred [B,D]).

  Packed rows (segments): latents [B,K,D], every segment at the same timesteps, latent_pred [B,K,D].
  Under jit XLA drops the work of an output the caller discards (e.g. a T2L sampler's text logits).
  """
  shape = tokens_BxS.shape[:1] if segments is None else latents_BxD.shape[:2]
  full_B = lambda t: jnp.full(shape, t, jnp.float32)
  outputs = model.apply(
    {'params': params},
    tokens_BxS,
    latents_BxD,
    full_B(text_t),
    full_B(latent_t),
    attention_mask=mask_BxS,
    deterministic=True,
    segments=segments,
  )
  return outputs[0], outputs[1][:, 0, :] if segments is None else outputs[1]
