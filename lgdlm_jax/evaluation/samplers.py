"""The two conditional samplers, as pure jittable functions of (params, inputs, rng).

    tokens_BxS = sample_l2t(params, latents_BxD, rng, model=model, config=config, seq_len=S, steps=N, top_p=0.9)
    latents_BxD = sample_t2l(params, tokens_BxS, mask_BxS, rng, model=model, config=config, steps=N)
    outputs_N = batched(functools.partial(jitted_sampler, params), inputs, batch_size, seed, 'desc')

(The unconditional sampler, text and latent together, is lgdlm_jax.evaluation.joint_sampler.)

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
  * Each position's distribution may be truncated by top-k, top-p and min-p (the reference has none).
Note that the cycle_vae objective trains L2T only at text t = 1 on all-[MASK] input: every round
after the first shows the model partly decoded text at t < 1, which it never saw in training
(latentDLM's unconditional pretraining, which masks text at random rates, does show it).

T2L: DDIM with eta = 0 from pure noise, conditioned on the clean text (text t = 0), over `steps`
equal steps from `t2l_start_time(config)` to 0, using the model's parameterization. The reference's
`sample_t2l_fixed.py` instead treats the model output as the clean latent whatever the
parameterization and uses a linear "alpha = 1 - t". Classifier-free guidance uses the reference's
null condition (all [PAD], nothing visible); only a model trained on it (loss.condition_dropout > 0)
has learned what that condition means.
"""

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from lgdlm_jax.errors import ConfigError
from lgdlm_jax.evaluation import filters
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


def banned_ids(config: ml_collections.ConfigDict) -> jax.Array:
  """[V] bool: ids the L2T sampler never emits (the mask token, ids the tokenizer lacks)."""
  vocab = config.model.vocab_size
  ids_V = jnp.arange(vocab)
  return (ids_V == config.tokenizer.mask_token_id) | (ids_V >= config.tokenizer.vocab_size)


def _rank_BxS(scores_BxS: jax.Array) -> jax.Array:
  """Rank of each position within its row, 0 = highest score; ties go to the earlier position."""
  order_BxS = jnp.argsort(-scores_BxS, axis=-1, stable=True)
  return jnp.argsort(order_BxS, axis=-1, stable=True)


class TokenSampling(NamedTuple):
  """How a token is drawn at a position: temperature (0 = greedy), then top-k, top-p, min-p
  (lgdlm_jax.evaluation.filters)."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0

  def check(self) -> None:
    if self.temperature < 0:
      raise ConfigError(f'temperature={self.temperature} must be >= 0 (0 = greedy)')
    filters.check_filters(self.top_k, self.top_p, self.min_p)


def unmask_round(
  tokens_BxS: jax.Array,
  decoded_BxS: jax.Array,
  logits_BxSxV: jax.Array,
  count: jax.Array,
  key: jax.Array,
  options: TokenSampling,
  banned_V: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """One round of confidence-ordered unmasking: (tokens, decoded) with the `count` (one for every
  row, or [B]) most confident still-masked positions of each row decoded from `logits_BxSxV`."""
  logits_BxSxV = jnp.where(banned_V, -jnp.inf, logits_BxSxV)
  if options.temperature > 0:
    logits_BxSxV = logits_BxSxV / options.temperature
  logits_BxSxV = filters.filter_logits(logits_BxSxV, top_k=options.top_k, top_p=options.top_p, min_p=options.min_p)
  if options.temperature > 0:
    proposal_BxS = jax.random.categorical(key, logits_BxSxV, axis=-1)
  else:
    proposal_BxS = jnp.argmax(logits_BxSxV, axis=-1)
  confidence_BxS = jnp.max(jax.nn.softmax(logits_BxSxV, axis=-1), axis=-1)
  confidence_BxS = jnp.where(decoded_BxS, -jnp.inf, confidence_BxS)
  # Decoded positions rank last and `count` never exceeds the masked positions left, so only
  # masked positions are chosen.
  chosen_BxS = _rank_BxS(confidence_BxS) < jnp.reshape(count, (-1, 1))
  tokens_BxS = jnp.where(chosen_BxS, proposal_BxS.astype(jnp.int32), tokens_BxS)
  return tokens_BxS, decoded_BxS | chosen_BxS


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
  top_k: int = 0,
  top_p: float = 1.0,
  min_p: float = 0.0,
  lengths_B: jax.Array | None = None,
) -> jax.Array:
  """Confidence-ordered unmasking; returns int32 tokens [B, seq_len] with no [MASK] left.

  temperature > 0 samples each position from softmax(logits / temperature), truncated by top_k,
  top_p and min_p (lgdlm_jax.evaluation.filters); 0 is greedy (argmax). Confidence is the largest
  probability at the position (of the truncated distribution), as in the reference. attention_mask
  [B,S] (None = all true, as the reference) is passed to every model call; all S positions are
  decoded either way. lengths_B (int [B], 1..seq_len; e.g. `predicted_lengths`) instead decodes
  the first lengths_B[b] positions of row b only, with the attention mask they imply and
  unmask_counts(length, steps) as its schedule, never emits tokenizer.pad_token_id there, and leaves
  it after them.
  A fixed rng gives fixed tokens.
  """
  options = TokenSampling(temperature, top_k, top_p, min_p)
  options.check()
  if lengths_B is not None and attention_mask is not None:
    raise ValueError('give sample_l2t attention_mask or lengths_B, not both (the lengths imply the mask)')
  batch = latents_BxD.shape[0]
  text_t = 1.0 - jnp.arange(steps, dtype=jnp.float32) / steps
  keys = jax.random.split(rng, steps)
  banned_V = banned_ids(config)
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
    t, count, key = inputs
    logits_BxSxV, _ = apply_model(model, params, carry[0], latents_BxD, t, 0.0, attention_mask)
    return unmask_round(*carry, logits_BxSxV, count, key, options, banned_V), None

  (tokens_BxS, _), _ = jax.lax.scan(round_, (tokens_BxS, decoded_BxS), (text_t, counts, keys))
  return tokens_BxS


def predicted_lengths(params: Params, latents_BxD: jax.Array, *, model: nn.Module) -> jax.Array:
  """The length head's most likely token count (1..S) of each latent, int32 [B]; model.length_head only."""
  return length_head.predicted_lengths(length_logits(model, params, latents_BxD))


# latentDLM's pretraining modes that train the latent head, all up to latent t = 1.
MODES_TRAINED_TO_T1 = ('t2l', 'unconditional', 'sequential', 'random')


def t2l_start_time(config: ml_collections.ConfigDict) -> float:
  """The largest latent t the objective trained on: where T2L sampling starts from noise.

  cycle_vae: `full` mode trains only at t = 1 (so a 1-step sampler is what it learned); `random`
  mode draws t up to loss.cycle_latent_t_max (clamped to 0.9999) and never shows the model t = 1,
  where the cosine schedule's sqrt(abar) = 1.56e-5 would turn any error in an epsilon prediction
  into a ~6e4 times larger error of the clean estimate. latentDLM's t2l and unconditional modes
  (and schedules of modes) train up to t = 1; its l2t mode never trains the latent head, so a
  model trained only that way has no T2L to sample.
  """
  loss_type = config.loss.loss_type
  if loss_type == 'l2t':
    raise ConfigError("loss.loss_type='l2t' never trains the latent head: this model has no T2L to sample")
  if loss_type in MODES_TRAINED_TO_T1 or config.loss.latent_t_mode == 'full':
    return 1.0
  return min(config.loss.cycle_latent_t_max, diffusion.MAX_RANDOM_T)


def null_condition(batch: int, seq_len: int, pad_token_id: int) -> tuple[jax.Array, jax.Array]:
  """The reference's unconditional text for T2L guidance: all [PAD], nothing visible (mask all False)."""
  return jnp.full((batch, seq_len), pad_token_id, jnp.int32), jnp.zeros((batch, seq_len), bool)


def guided(conditional_BxD: jax.Array, unconditional_BxD: jax.Array, scale: float) -> jax.Array:
  """Classifier-free guidance on the model's output: u + scale * (c - u) (scale 1 = c)."""
  return unconditional_BxD + scale * (conditional_BxD - unconditional_BxD)


def sample_t2l(
  params: Params,
  tokens_BxS: jax.Array,
  attention_mask: jax.Array | None,
  rng: jax.Array,
  *,
  model: nn.Module,
  config: ml_collections.ConfigDict,
  steps: int,
  guidance_scale: float = 1.0,
  same_noise: bool = False,
) -> jax.Array:
  """DDIM (eta = 0) from N(0, I) at t2l_start_time(config) to 0; returns the clean estimate [B,D].

  same_noise: every row starts from one draw, so rows differ by their text alone (and a text's
  latent does not depend on its row or batch).

  The result is the last step's x0 estimate: the last DDIM update lands on table row 0, which
  is still very slightly noised (ddim_step's docstring). guidance_scale != 1 runs a second pass
  per step on the null condition (`null_condition`, as the reference) and combines the two
  outputs with `guided`; it helps only a model trained with loss.condition_dropout > 0.
  """
  if steps < 1:
    raise ValueError(f'steps={steps} must be positive')
  parameterization = config.model.latent_parameterization
  schedule = diffusion.schedule_from_config(config.model)
  times = jnp.linspace(t2l_start_time(config), 0.0, steps + 1, dtype=jnp.float32)
  batch, seq_len = tokens_BxS.shape
  rows = 1 if same_noise else batch
  z_BxD = jnp.broadcast_to(
    jax.random.normal(rng, (rows, config.model.latent_dim), jnp.float32), (batch, config.model.latent_dim)
  )
  null_tokens_BxS, null_mask_BxS = null_condition(batch, seq_len, config.tokenizer.pad_token_id)

  def step(z_BxD, ts):
    t, t_prev = ts[0], ts[1]
    _, output_BxD = apply_model(model, params, tokens_BxS, z_BxD, 0.0, t, attention_mask)
    if guidance_scale != 1.0:
      _, null_output_BxD = apply_model(model, params, null_tokens_BxS, z_BxD, 0.0, t, null_mask_BxS)
      output_BxD = guided(output_BxD, null_output_BxD, guidance_scale)
    eps_BxD = diffusion.predict_eps(schedule, z_BxD, t, output_BxD, parameterization)
    z_prev_BxD, x0_BxD = diffusion.ddim_step(schedule, z_BxD, t, t_prev, eps_BxD)
    return z_prev_BxD, x0_BxD

  _, x0_NxBxD = jax.lax.scan(step, z_BxD, jnp.stack([times[:-1], times[1:]], axis=1))
  return x0_NxBxD[-1]


def batched(fn, inputs: tuple[np.ndarray, ...], batch_size: int, seed: int, desc: str):
  """fn(*batch_inputs, key) over fixed-size batches (the last padded by repeating its last row); its
  outputs (an array or a tuple of arrays) concatenated over the batches, padding rows dropped.

  fn is a partial of a jitted sampler with the params bound as its first argument, so the params
  stay a jit argument rather than being baked into the compiled program as constants.
  """
  num = len(inputs[0])
  results = []
  for k, start in enumerate(tqdm.trange(0, num, batch_size, desc=desc)):
    rows = np.minimum(np.arange(start, start + batch_size), num - 1)
    out = fn(*(x[rows] for x in inputs), jax.random.fold_in(jax.random.key(seed), k))
    kept = min(batch_size, num - start)
    results.append(jax.tree.map(lambda o, kept=kept: np.asarray(o)[:kept], out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *results)
