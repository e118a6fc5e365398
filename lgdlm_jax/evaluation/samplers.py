"""The two samplers, as pure jittable functions of (params, inputs, rng).

    tokens_BxS = sample_l2t(params, latents_BxD, rng, model=model, config=config, seq_len=S, steps=N)
    latents_BxD = sample_t2l(params, tokens_BxS, mask_BxS, rng, model=model, config=config, steps=N)

L2T (the reference's `sample_l2t_fixed.py`): start from all-[MASK] text conditioned on the clean
latent (latent t = 0) and, in round i of `steps` with text t = 1 - i/steps, let the model predict
every position, then keep the `unmask_counts(S, steps)[i]` most confident still-masked positions.
The counts follow the reference's cosine schedule; they are the same for every sequence, so they
are a static table and each round is a fixed-shape rank-and-select over the whole batch.
Deliberate differences from the reference:
  * The last round decodes every position still masked. The reference's final target is
    int(S * (1 - cos(pi/2))), and 1 - cos(pi/2) rounds to just below 1, so whenever the cosine
    targets (not the one-per-round minimum) set the pace, e.g. S = 32 in 8 rounds, it leaves one
    [MASK] in its output, which its decode then drops silently.
  * Decoded positions are tracked by a flag, not by `token == mask_token_id`, and the mask token
    (and ids past `tokenizer.vocab_size`, as the reference truncates to its tokenizer) is never
    sampled, so a decoded token can never be changed again.
Note that the cycle_vae objective trains L2T only at text t = 1 on all-[MASK] input: every round
after the first shows the model partly decoded text at t < 1, which it never saw in training.

T2L: DDIM with eta = 0 from pure noise, conditioned on the clean text (text t = 0), over `steps`
equal steps from `t2l_start_time(config)` to 0, using the model's parameterization. The reference's
`sample_t2l_fixed.py` instead treats the model output as the clean latent whatever the
parameterization and uses a linear "alpha = 1 - t"; its classifier-free guidance needs a null
condition that the cycle_vae objective never trains, so guidance is not offered here.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lgdlm_jax.model import length_head
from lgdlm_jax.model.passes import apply_model
from lgdlm_jax.model.passes import length_logits
from lgdlm_jax.objective import diffusion

Params = Any


def unmask_counts(seq_len: int, steps: int) -> np.ndarray:
  """Positions decoded in each of `steps` rounds, int32 [steps], summing to seq_len.

  Round i aims at int(S * (1 - cos((i + 1) / steps * pi / 2))) decoded positions in total,
  decodes at least one position while any is masked, and the last round decodes all that remain.
  """
  if seq_len < 1 or steps < 1:
    raise ValueError(f'seq_len={seq_len} and steps={steps} must both be positive')
  counts = np.zeros(steps, np.int32)
  decoded = 0
  for i in range(steps):
    target = int(seq_len * (1.0 - math.cos((i + 1) / steps * math.pi / 2)))
    counts[i] = min(max(1, target - decoded), seq_len - decoded)
    decoded += counts[i]
  counts[-1] += seq_len - decoded
  return counts


def _banned_ids(config: ml_collections.ConfigDict) -> jax.Array:
  """[V] bool: ids the L2T sampler never emits (the mask token, ids the tokenizer lacks)."""
  vocab = config.model.vocab_size
  ids_V = jnp.arange(vocab)
  return (ids_V == config.tokenizer.mask_token_id) | (ids_V >= config.tokenizer.vocab_size)


def _rank_BxS(scores_BxS: jax.Array) -> jax.Array:
  """Rank of each position within its row, 0 = highest score; ties go to the earlier position."""
  order_BxS = jnp.argsort(-scores_BxS, axis=-1, stable=True)
  return jnp.argsort(order_BxS, axis=-1, stable=True)


def sample_l2t(
  params: Params,
  latents_BxD: jax.Array,
  rng: jax.Array,
  *,
  model: nn.Module,
  config: ml_collections.ConfigDict,
  seq_len: int,
  steps: int,
  temperature: float = 1.0,
  attention_mask: jax.Array | None = None,
  lengths_B: jax.Array | None = None,
) -> jax.Array:
  """Confidence-ordered unmasking; returns int32 tokens [B, seq_len] with no [MASK] left.

  temperature > 0 samples each position from softmax(logits / temperature); 0 is greedy (argmax).
  Confidence is the largest probability at the position, as in the reference. attention_mask
  [B,S] (None = all true, as the reference) is passed to every model call; all S positions are
  decoded either way. lengths_B (int [B], 1..seq_len; e.g. `predicted_lengths`) instead decodes
  the first lengths_B[b] positions of row b only, with the attention mask they imply and
  unmask_counts(length, steps) as its schedule, never emits tokenizer.pad_token_id there, and leaves
  it after them.
  A fixed rng gives fixed tokens.
  """
  if temperature < 0:
    raise ValueError(f'temperature={temperature} must be >= 0 (0 = greedy)')
  if lengths_B is not None and attention_mask is not None:
    raise ValueError('give sample_l2t attention_mask or lengths_B, not both (the lengths imply the mask)')
  batch = latents_BxD.shape[0]
  text_t = 1.0 - jnp.arange(steps, dtype=jnp.float32) / steps
  keys = jax.random.split(rng, steps)
  banned_V = _banned_ids(config)
  tokens_BxS = jnp.full((batch, seq_len), config.tokenizer.mask_token_id, jnp.int32)
  decoded_BxS = jnp.zeros((batch, seq_len), bool)
  if lengths_B is None:
    counts = jnp.broadcast_to(jnp.asarray(unmask_counts(seq_len, steps))[:, None], (steps, batch))
  else:
    lengths_B = jnp.clip(jnp.asarray(lengths_B, jnp.int32), 1, seq_len)
    table_SxT = np.stack([unmask_counts(length, steps) for length in range(1, seq_len + 1)])
    counts = jnp.asarray(table_SxT)[lengths_B - 1].T
    attention_mask = jnp.arange(seq_len)[None] < lengths_B[:, None]
    # A text of a known length holds no [PAD].
    banned_V = banned_V | (jnp.arange(banned_V.shape[0]) == config.tokenizer.pad_token_id)
    # Past its length a row is padding from the start: decoded, so never chosen.
    decoded_BxS = ~attention_mask
    tokens_BxS = jnp.where(attention_mask, tokens_BxS, config.tokenizer.pad_token_id)

  def round_(carry, inputs):
    tokens_BxS, decoded_BxS = carry
    t, count, key = inputs
    logits_BxSxV, _ = apply_model(model, params, tokens_BxS, latents_BxD, t, 0.0, attention_mask)
    logits_BxSxV = jnp.where(banned_V, -jnp.inf, logits_BxSxV)
    if temperature > 0:
      logits_BxSxV = logits_BxSxV / temperature
      proposal_BxS = jax.random.categorical(key, logits_BxSxV, axis=-1)
    else:
      proposal_BxS = jnp.argmax(logits_BxSxV, axis=-1)
    confidence_BxS = jnp.max(jax.nn.softmax(logits_BxSxV, axis=-1), axis=-1)
    confidence_BxS = jnp.where(decoded_BxS, -jnp.inf, confidence_BxS)
    # Decoded positions rank last and `count` never exceeds the masked positions left, so only
    # masked positions are chosen.
    chosen_BxS = _rank_BxS(confidence_BxS) < count[:, None]
    tokens_BxS = jnp.where(chosen_BxS, proposal_BxS.astype(jnp.int32), tokens_BxS)
    return (tokens_BxS, decoded_BxS | chosen_BxS), None

  (tokens_BxS, _), _ = jax.lax.scan(round_, (tokens_BxS, decoded_BxS), (text_t, counts, keys))
  return tokens_BxS


def predicted_lengths(params: Params, latents_BxD: jax.Array, *, model: nn.Module) -> jax.Array:
  """The length head's most likely token count (1..S) of each latent, int32 [B]; model.length_head only."""
  return length_head.predicted_lengths(length_logits(model, params, latents_BxD))


def t2l_start_time(config: ml_collections.ConfigDict) -> float:
  """The largest latent t the objective trained on: where T2L sampling starts from noise.

  `full` mode trains only at t = 1 (so a 1-step sampler is what it learned); `random` mode draws
  t up to loss.cycle_latent_t_max (clamped to 0.9999) and never shows the model t = 1, where the
  cosine schedule's sqrt(abar) = 1.56e-5 would turn any error in an epsilon prediction into a
  ~6e4 times larger error of the clean estimate.
  """
  if config.loss.latent_t_mode == 'full':
    return 1.0
  return min(config.loss.cycle_latent_t_max, diffusion.MAX_RANDOM_T)


def sample_t2l(
  params: Params,
  tokens_BxS: jax.Array,
  attention_mask: jax.Array | None,
  rng: jax.Array,
  *,
  model: nn.Module,
  config: ml_collections.ConfigDict,
  steps: int,
) -> jax.Array:
  """DDIM (eta = 0) from N(0, I) at t2l_start_time(config) to 0; returns the clean estimate [B,D].

  The result is the last step's x0 estimate: the last DDIM update lands on table row 0, which
  is still very slightly noised (ddim_step's docstring).
  """
  if steps < 1:
    raise ValueError(f'steps={steps} must be positive')
  parameterization = config.model.latent_parameterization
  schedule = diffusion.schedule_from_config(config.model)
  times = jnp.linspace(t2l_start_time(config), 0.0, steps + 1, dtype=jnp.float32)
  z_BxD = jax.random.normal(rng, (tokens_BxS.shape[0], config.model.latent_dim), jnp.float32)

  def step(z_BxD, ts):
    t, t_prev = ts[0], ts[1]
    _, output_BxD = apply_model(model, params, tokens_BxS, z_BxD, 0.0, t, attention_mask)
    eps_BxD = diffusion.predict_eps(schedule, z_BxD, t, output_BxD, parameterization)
    z_prev_BxD, x0_BxD = diffusion.ddim_step(schedule, z_BxD, t, t_prev, eps_BxD)
    return z_prev_BxD, x0_BxD

  _, x0_NxBxD = jax.lax.scan(step, z_BxD, jnp.stack([times[:-1], times[1:]], axis=1))
  return x0_NxBxD[-1]
