"""What the model has learned, on validation batches: sampler-based metrics.

    metrics = evaluate_batch(params, batch, rng, model=model, config=config)   # jittable

`evaluate_batch` reports, for one batch (every accuracy counts non-padding positions only, i.e.
where batch['attention_mask'] is true, pooled over the batch; every cosine is averaged over it):
  l2t_onepass_acc     argmax of ONE L2T pass (all-[MASK] text, clean latent): what the base L2T
                      loss trains.
  l2t_onepass_acc_shuffled  the same pass given another row's latent (the batch's latents rolled
                      by one row), scored against the row's own text: what L2T gets from the text
                      distribution alone. The gap to l2t_onepass_acc is what the latent contributes.
  l2t_sample_acc      the L2T sampler's output (training.eval_l2t_steps rounds at
                      training.eval_temperature, 0 = greedy). Expect it below the one-pass
                      number: the objective trains L2T only on all-[MASK] text at t = 1, and
                      the sampler's later rounds feed partly decoded text at t < 1.
  t2l_cosine          cosine(DDIM T2L sample from the clean text, true latent), training.eval_t2l_steps.
  t2l_mean_latent_cosine  the cosine of always predicting the mean latent, each row's mean taken
                      over the OTHER rows of the batch (so it never sees the row it is scored on):
                      the baseline t2l_cosine must beat to show the text was read.
  t2l_norm            the mean L2 norm of those T2L samples (compare the data's latents' norm).
  cycle_t2l2t_acc     text -> sampled latent -> one L2T pass: token accuracy.
  cycle_l2t2l_cosine  latent -> sampled text -> sampled latent: cosine with the true latent.
  length_acc, length_mae  (model.length_head only) how often the length head's most likely length
                      is the sentence's true token count, and its mean absolute error in tokens.
Rolling and leave-one-out need a batch of at least 2 rows (with 1 row the shuffled latent is the
true one). A packed batch (data.packing) is first laid out one sentence per row (`per_sentence`,
B*K rows, the empty slots weighted 0), so every number is per sentence, as in an unpacked run.
Both samplers get the batch's attention mask (the true length), the same conditioning the
one-pass prediction and the training passes get. Cost in model passes over B rows:
3 + eval_l2t_steps + 2 * eval_t2l_steps (the two T2L samples run as one 2B-row sampler).
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lgdlm_jax import model as model_lib
from lgdlm_jax.evaluation import samplers
from lgdlm_jax.model import layers
from lgdlm_jax.model import passes

Params = Any


def per_sentence(batch: dict[str, jax.Array], pad_token_id: int) -> tuple[dict[str, jax.Array], jax.Array]:
  """A packed batch as an unpacked one with one sentence per row: (batch of B*K rows, row b*K + k
  from segment k+1 of row b, left-aligned and padded with pad_token_id; valid [B*K] bool, False
  for the empty slots)."""
  ids_BxS = jnp.asarray(batch['input_ids']).astype(jnp.int32)
  lengths_BxK = jnp.asarray(batch['segment_lengths']).astype(jnp.int32)
  starts_BxK = jnp.cumsum(lengths_BxK, axis=1) - lengths_BxK
  seq_len = ids_BxS.shape[1]
  positions_S = jnp.arange(seq_len)
  source_BxKxS = jnp.clip(starts_BxK[..., None] + positions_S, 0, seq_len - 1)
  mask_BxKxS = positions_S < lengths_BxK[..., None]
  gathered_BxKxS = jnp.take_along_axis(ids_BxS[:, None, :], source_BxKxS, axis=2)
  rows = dict(
    input_ids=jnp.where(mask_BxKxS, gathered_BxKxS, pad_token_id).reshape(-1, seq_len),
    attention_mask=mask_BxKxS.reshape(-1, seq_len),
    latent=jnp.asarray(batch['latent'], jnp.float32).reshape(-1, batch['latent'].shape[-1]),
  )
  return rows, jnp.asarray(batch['latent_mask']).astype(bool).reshape(-1)


def _token_accuracy(pred_BxS: jax.Array, target_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  correct = jnp.sum((pred_BxS == target_BxS) & mask_BxS)
  return correct / jnp.maximum(jnp.sum(mask_BxS), 1)


def _valid_mean(values_B: jax.Array, valid_B: jax.Array) -> jax.Array:
  return jnp.sum(jnp.where(valid_B, values_B, 0.0)) / jnp.maximum(jnp.sum(valid_B), 1)


def _mean_cosine(x_BxD: jax.Array, y_BxD: jax.Array, valid_B: jax.Array) -> jax.Array:
  return _valid_mean(jnp.sum(layers.l2_normalize(x_BxD) * layers.l2_normalize(y_BxD), axis=-1), valid_B)


def _batch_arrays(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  ids_BxS = jnp.asarray(batch['input_ids']).astype(jnp.int32)
  mask_BxS = jnp.asarray(batch['attention_mask']).astype(bool)
  return ids_BxS, mask_BxS, model_lib.as_one_latent_token(jnp.asarray(batch['latent'], jnp.float32))[:, 0]


def _leave_one_out_mean(x_BxD: jax.Array, valid_B: jax.Array) -> jax.Array:
  """Row i: the mean of every other valid row (x_i itself when it is the only one)."""
  weights_Bx1 = valid_B.astype(jnp.float32)[:, None]
  others_Bx1 = jnp.sum(weights_Bx1) - weights_Bx1
  loo_BxD = (jnp.sum(weights_Bx1 * x_BxD, axis=0, keepdims=True) - weights_Bx1 * x_BxD) / jnp.maximum(others_Bx1, 1)
  return jnp.where(others_Bx1 > 0, loo_BxD, x_BxD)


def _previous_valid_row(valid_B: jax.Array) -> jax.Array:
  """For each row, the index of the valid row before it (cyclically, among the valid rows only)."""
  order_B = jnp.argsort(~valid_B, stable=True)  # the valid rows first, in order
  rank_B = jnp.argsort(order_B, stable=True)
  count = jnp.maximum(jnp.sum(valid_B), 1)
  return order_B[(rank_B - 1) % count]


def one_pass_l2t(
  params: Params, latents_BxD: jax.Array, mask_BxS: jax.Array, *, model, config: ml_collections.ConfigDict
) -> jax.Array:
  """Argmax tokens [B,S] of one pass on all-[MASK] text at text t = 1, as in the base L2T loss."""
  all_mask_BxS = jnp.full(mask_BxS.shape, config.tokenizer.mask_token_id, jnp.int32)
  logits_BxSxV, _ = passes.apply_model(model, params, all_mask_BxS, latents_BxD, 1.0, 0.0, mask_BxS)
  return jnp.argmax(logits_BxSxV, axis=-1).astype(jnp.int32)


def l2t_predictions(
  params: Params, batch: dict[str, jax.Array], rng: jax.Array, *, model, config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
  """{'one_pass': [B,S], 'sampled': [B,S]} int32 tokens decoded from the batch's latents."""
  ids_BxS, mask_BxS, latents_BxD = _batch_arrays(batch)
  sampled_BxS = samplers.sample_l2t(
    params,
    latents_BxD,
    rng,
    model=model,
    config=config,
    seq_len=ids_BxS.shape[1],
    steps=int(config.training.eval_l2t_steps),
    temperature=float(config.training.eval_temperature),
    attention_mask=mask_BxS,
  )
  return {'one_pass': one_pass_l2t(params, latents_BxD, mask_BxS, model=model, config=config), 'sampled': sampled_BxS}


def evaluate_batch(
  params: Params, batch: dict[str, jax.Array], rng: jax.Array, *, model, config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
  """The module docstring's float32 scalars for one batch; pure, so jit it once."""
  valid_B = jnp.ones(batch['input_ids'].shape[:1], bool)
  if 'segment_ids' in batch:
    batch, valid_B = per_sentence(batch, config.tokenizer.pad_token_id)
  ids_BxS, mask_BxS, latents_BxD = _batch_arrays(batch)
  l2t_key, t2l_key = jax.random.split(rng)
  predicted = l2t_predictions(params, batch, l2t_key, model=model, config=config)

  # T2L from the true text and from the sampled text, as one sampler call over 2B rows.
  t2l_2BxD = samplers.sample_t2l(
    params,
    passes.interleave(ids_BxS, predicted['sampled']),
    passes.interleave(mask_BxS, mask_BxS),
    t2l_key,
    model=model,
    config=config,
    steps=int(config.training.eval_t2l_steps),
  )
  t2l_Bx2xD = t2l_2BxD.reshape(ids_BxS.shape[0], 2, -1)
  from_text_BxD, from_sampled_text_BxD = t2l_Bx2xD[:, 0], t2l_Bx2xD[:, 1]
  cycle_BxS = one_pass_l2t(params, from_text_BxD, mask_BxS, model=model, config=config)
  shuffled_latents_BxD = latents_BxD[_previous_valid_row(valid_B)]
  shuffled_BxS = one_pass_l2t(params, shuffled_latents_BxD, mask_BxS, model=model, config=config)

  metrics = dict(
    l2t_onepass_acc=_token_accuracy(predicted['one_pass'], ids_BxS, mask_BxS),
    l2t_onepass_acc_shuffled=_token_accuracy(shuffled_BxS, ids_BxS, mask_BxS),
    l2t_sample_acc=_token_accuracy(predicted['sampled'], ids_BxS, mask_BxS),
    t2l_cosine=_mean_cosine(from_text_BxD, latents_BxD, valid_B),
    t2l_mean_latent_cosine=_mean_cosine(_leave_one_out_mean(latents_BxD, valid_B), latents_BxD, valid_B),
    t2l_norm=_valid_mean(jnp.linalg.norm(from_text_BxD, axis=-1), valid_B),
    cycle_t2l2t_acc=_token_accuracy(cycle_BxS, ids_BxS, mask_BxS),
    cycle_l2t2l_cosine=_mean_cosine(from_sampled_text_BxD, latents_BxD, valid_B),
  )
  if config.model.length_head:
    error_B = jnp.abs(samplers.predicted_lengths(params, latents_BxD, model=model) - jnp.sum(mask_BxS, axis=-1))
    metrics.update(length_acc=_valid_mean(error_B == 0, valid_B), length_mae=_valid_mean(error_B, valid_B))
  return {k: v.astype(jnp.float32) for k, v in metrics.items()}
