"""The cycle_vae training objective (SPEC.md section 3) as a pure, jittable function.

    draws = sample_draws(rng, batch_size, latent_dim, config)
    loss, metrics = cycle_vae_loss(params, batch, draws, step=step, model=model, config=config)

All randomness enters through `draws`, so a test can feed the very same noise to the PyTorch
reference. The four passes run as two model calls: base T2L and base L2T are independent, and so
are cycle-text and cycle-latent once the first round is done, so each round joins its passes
along the batch axis into one call (same params, so this is exact) instead of calling the model
four times (see `run_passes` for the row order); the text heads run only on the L2T rows.

Conventions of the reference trainer (`cycle_vae_impl/trainers/cycle_vae_trainer.py`) kept here:
- Both latent timestep draws, the base T2L `t_lat` and the cycle-latent `t_lat2`, come from
  U(loss.cycle_latent_t_min, loss.cycle_latent_t_max) clamped to <= 0.9999 (`latent_t_mode:
  random`) or are exactly 1 (`full`, also spelt `ones` / `t1`); there is no separate base range.
- Both L2T passes (base and cycle-text) get the text attention mask; their input is all
  `tokenizer.mask_token_id`. Their cross-entropy nevertheless averages over ALL B*S positions.
- Ramp weight: 0 while step < warmup, then base * min(1, (step - warmup) / ramp) (so the first
  step after warmup still has weight 0), base at once when ramp = 0, and 0 whenever base <= 0.
- Metrics report the CLAMPED, UNWEIGHTED terms; latent_pred_norm and x0_pred_norm are the batch
  means of the per-example L2 norm over D of the base T2L prediction and of its x0 estimate.

Deliberate differences (SPEC.md section 3):
- latent_pred is [B,1,D]; it is squeezed to [B,D] before any loss (the reference crashes there).
- Nothing is substituted for non-finite values: a NaN stays a NaN; the train step reports it.
- The cycle-latent term is built whenever `loss.cycle_latent_weight > 0` in the config (a static
  choice), also during its warmup, where the reference skips it because its ramped weight is 0.
  Its contribution is then weight 0 times the loss, and its metric reports the computed loss where
  the reference logs 0.
- The reference also logs `cycle_latent_sampling` (a string); metrics here are float32 scalars only.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lgdlm_jax import diffusion
from lgdlm_jax import layers

# The reference keeps t < 1 in random mode so that sqrt(abar) never reaches its smallest value.
LATENT_T_MAX = 0.9999
# F.normalize's eps: the norm is clamped to at least this before dividing.
NORMALIZE_EPS = 1e-8
LATENT_LOSS_MAX = 10.0
TEXT_LOSS_MAX = 100.0
FULL_T_MODES = ('full', 'ones', 't1')
SAMPLINGS = ('argmax', 'categorical')

Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """The static (trace-time) choices of the objective, read and checked once from the config."""
  latent_loss_weight: float
  cycle_text_weight: float
  cycle_text_warmup_steps: int
  cycle_text_ramp_steps: int
  cycle_latent_weight: float
  cycle_latent_warmup_steps: int
  cycle_latent_ramp_steps: int
  cycle_latent_sampling: str
  cycle_stop_grad_latent: bool
  mask_token_id: int
  parameterization: str
  beta_schedule: str
  num_timesteps: int

  @property
  def cycle_latent_on(self) -> bool:
    return self.cycle_latent_weight > 0.0


def _loss_key(config: ml_collections.ConfigDict, key: str) -> Any:
  """config.loss[key]; lgdlm_jax.default_config holds the reference trainer's defaults."""
  if 'loss' not in config or key not in config.loss:
    raise ValueError(f'loss.{key} is missing from the config (start from lgdlm_jax.default_config)')
  return config.loss[key]


def loss_options(config: ml_collections.ConfigDict) -> LossOptions:
  """Reads config.loss / config.model.latent_* / config.tokenizer.mask_token_id; raises ValueError."""
  sampling = str(_loss_key(config, 'cycle_latent_sampling')).lower()
  if sampling not in SAMPLINGS:
    raise ValueError(f'loss.cycle_latent_sampling={sampling!r}; expected one of {SAMPLINGS}')
  parameterization = config.model.get('latent_parameterization', 'epsilon')
  if parameterization not in diffusion.PARAMETERIZATIONS:
    raise ValueError(f'model.latent_parameterization={parameterization!r}; '
                     f'expected one of {diffusion.PARAMETERIZATIONS}')
  mask_token_id = config.tokenizer.mask_token_id
  # An out-of-range id would not fail in JAX: the embedding lookup would silently fill with NaN.
  if not 0 <= mask_token_id < config.model.vocab_size:
    raise ValueError(f'tokenizer.mask_token_id={mask_token_id} is outside the model vocabulary '
                     f'[0, {config.model.vocab_size})')
  return LossOptions(
      latent_loss_weight=float(_loss_key(config, 'latent_loss_weight')),
      cycle_text_weight=float(_loss_key(config, 'cycle_text_weight')),
      cycle_text_warmup_steps=int(_loss_key(config, 'cycle_text_warmup_steps')),
      cycle_text_ramp_steps=int(_loss_key(config, 'cycle_text_ramp_steps')),
      cycle_latent_weight=float(_loss_key(config, 'cycle_latent_weight')),
      cycle_latent_warmup_steps=int(_loss_key(config, 'cycle_latent_warmup_steps')),
      cycle_latent_ramp_steps=int(_loss_key(config, 'cycle_latent_ramp_steps')),
      cycle_latent_sampling=sampling,
      cycle_stop_grad_latent=bool(_loss_key(config, 'cycle_stop_grad_latent')),
      mask_token_id=int(mask_token_id),
      parameterization=parameterization,
      beta_schedule=config.model.get('latent_beta_schedule', 'cosine'),
      num_timesteps=int(config.model.get('latent_timesteps', 1000)),
  )


# ---------------------------------------------------------------------------------------------
# Random draws.


def sample_latent_t(rng: jax.Array, batch_size: int, config: ml_collections.ConfigDict) -> jax.Array:
  """Latent timesteps t_B: U(cycle_latent_t_min, cycle_latent_t_max) clamped to <= 0.9999, or ones."""
  mode = str(_loss_key(config, 'latent_t_mode')).lower()
  if mode in FULL_T_MODES:
    return jnp.ones((batch_size,), jnp.float32)
  if mode != 'random':
    raise ValueError(f'loss.latent_t_mode={mode!r}; expected random or one of {FULL_T_MODES}')
  t_min = float(_loss_key(config, 'cycle_latent_t_min'))
  t_max = float(_loss_key(config, 'cycle_latent_t_max'))
  if not 0.0 <= t_min < t_max <= 1.0:
    raise ValueError(f'loss.cycle_latent_t_min/t_max = [{t_min}, {t_max}]; expected 0 <= min < max <= 1')
  t_B = t_min + (t_max - t_min) * jax.random.uniform(rng, (batch_size,), jnp.float32)
  return jnp.minimum(t_B, LATENT_T_MAX)


def sample_draws(rng: jax.Array, batch_size: int, latent_dim: int,
                 config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Every random input of one cycle_vae_loss call.

  t_lat [B], noise [B,D]: the base T2L pass; t_lat2 [B], noise2 [B,D]: the cycle-latent pass
  (drawn even when that term is off, so the draws keep one structure); sample_key: categorical
  pseudo tokens; dropout_key: the model's dropout.
  """
  t_key, noise_key, t2_key, noise2_key, sample_key, dropout_key = jax.random.split(rng, 6)
  return dict(
      t_lat=sample_latent_t(t_key, batch_size, config),
      noise=jax.random.normal(noise_key, (batch_size, latent_dim), jnp.float32),
      t_lat2=sample_latent_t(t2_key, batch_size, config),
      noise2=jax.random.normal(noise2_key, (batch_size, latent_dim), jnp.float32),
      sample_key=sample_key,
      dropout_key=dropout_key,
  )


# ---------------------------------------------------------------------------------------------
# Pieces of the objective.


def ramp_weight(step: int | jax.Array | None, base: float, warmup_steps: int, ramp_steps: int) -> jax.Array:
  """The reference's cycle-weight schedule; `step` may be a traced integer. float32 scalar.

  0 for step < warmup; base * min(1, (step - warmup) / ramp) after (base at once if ramp = 0);
  always 0 if base <= 0; the base itself when step is None (as the reference).
  """
  if step is None:
    return jnp.asarray(base, jnp.float32)
  if base <= 0.0:
    return jnp.zeros((), jnp.float32)
  warmup_steps, ramp_steps = max(0, int(warmup_steps)), max(0, int(ramp_steps))
  # Subtract in integers so that large step counts lose no precision before the division.
  since_warmup = jnp.asarray(step).astype(jnp.int32) - warmup_steps
  progress = 1.0 if ramp_steps == 0 else jnp.minimum(1.0, since_warmup.astype(jnp.float32) / ramp_steps)
  return jnp.where(since_warmup < 0, 0.0, base * progress).astype(jnp.float32)


def normalized_mse(pred_BxD: jax.Array, target_BxD: jax.Array) -> jax.Array:
  """Mean squared error between the l2-normalised prediction and target (mean over B and D)."""
  return jnp.mean(jnp.square(layers.l2_normalize(pred_BxD, eps=NORMALIZE_EPS)
                             - layers.l2_normalize(target_BxD, eps=NORMALIZE_EPS)))


def text_cross_entropy(logits_BxSxV: jax.Array, targets_BxS: jax.Array) -> jax.Array:
  """Token cross-entropy averaged over ALL B*S positions, padding included (as the reference).

  Written as logsumexp - target logit rather than a gather from log_softmax: the [B,S,V]
  log-probabilities are never materialised, and XLA fuses the backward (softmax minus the
  scattered one-hot) into fewer passes over [B,S,V]; forward + backward ran 2.5x faster on CPU.
  """
  logits_BxSxV = logits_BxSxV.astype(jnp.float32)
  target_logit_BxS = jnp.take_along_axis(logits_BxSxV, targets_BxS[..., None], axis=-1)[..., 0]
  return jnp.mean(jax.nn.logsumexp(logits_BxSxV, axis=-1) - target_logit_BxS)


def sample_pseudo_tokens(logits_BxSxV: jax.Array, sampling: str, key: jax.Array) -> jax.Array:
  """Pseudo tokens [B,S] int32 from L2T logits: argmax, or a categorical sample drawn with `key`."""
  logits_BxSxV = jax.lax.stop_gradient(logits_BxSxV)
  if sampling == 'argmax':
    return jnp.argmax(logits_BxSxV, axis=-1).astype(jnp.int32)
  if sampling == 'categorical':
    return jax.random.categorical(key, logits_BxSxV, axis=-1).astype(jnp.int32)
  raise ValueError(f'cycle_latent_sampling={sampling!r}; expected one of {SAMPLINGS}')


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
               text_logits_wanted: Sequence[bool] | None = None) -> list[tuple[jax.Array | None, jax.Array]]:
  """Independent passes of equal batch size B as ONE model call on a batch of P*B.

  Returns (text_logits [B,S,V], latent_pred [B,D]) per pass, in order; the model's single latent
  token is squeezed away. Examples never interact inside the model, so this equals separate calls.
  The passes are interleaved per example (row b*P + p) rather than laid end to end: with the
  batch axis sharded over devices, each device's rows of the joint batch are then exactly its own
  rows of every pass, so joining and splitting are local reshapes, never cross-device copies.

  text_logits_wanted[p] = False: pass p's text logits are None. When exactly one pass wants them,
  the model's text heads run on that pass's rows only (a strided slice of the joint batch);
  otherwise they run on every row and the unwanted logits are dropped.

  Why joined: one call per pass lets XLA also drop the last block's text branch of a T2L pass
  (with the blocks unrolled), which ran a CPU step 7% faster (7.3 against 7.8 s, H=512, 4 blocks),
  but each pass is then compiled separately: the tiny test model's train step took 23 s to
  compile against 15 s, and a scanned deep model gains nothing from it.
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
  outputs = model.apply({'params': params}, joined.tokens_BxS, joined.latents_BxD, joined.text_t_B,
                        joined.latent_t_B, attention_mask=joined.mask_BxS, deterministic=deterministic, **options)
  latent_pred_BxPxD = outputs[1][:, 0, :].reshape(batch_size, num_passes, -1)
  if only_pass is None:
    text_logits_BxPxSxV = outputs[0].reshape((batch_size, num_passes) + outputs[0].shape[1:])
    text_logits = [text_logits_BxPxSxV[:, p] if wanted[p] else None for p in range(num_passes)]
  else:
    text_logits = [outputs[0] if p == only_pass else None for p in range(num_passes)]
  return [(text_logits[p], latent_pred_BxPxD[:, p]) for p in range(num_passes)]


def _latents_2d(latent: jax.Array) -> jax.Array:
  if latent.ndim == 3 and latent.shape[1] == 1:
    latent = latent[:, 0, :]
  if latent.ndim != 2:
    raise ValueError(f"batch['latent'] must be [B,D] or [B,1,D], got shape {latent.shape}")
  return latent.astype(jnp.float32)


def _mean_l2_norm(x_BxD: jax.Array) -> jax.Array:
  return jnp.mean(jnp.linalg.norm(x_BxD, axis=-1))


# ---------------------------------------------------------------------------------------------
# The objective.


def cycle_vae_loss(
    params: Params,
    batch: Mapping[str, jax.Array],
    draws: Mapping[str, jax.Array],
    *,
    step: int | jax.Array | None,
    model: nn.Module,
    config: ml_collections.ConfigDict,
    deterministic: bool | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The cycle_vae loss of one batch, and its metrics (float32 scalars, no gradient).

  batch: input_ids int [B,S], attention_mask bool [B,S] (absent = all true), latent float
  [B,D] or [B,1,D]. draws: from `sample_draws`. step: the training step for the cycle-weight
  ramps (a traced int is fine; None = base weights). deterministic: None derives it from the
  config, i.e. dropout is active (with draws['dropout_key']) whenever model.dropout > 0, as in
  training; pass True for evaluation.
  """
  opts = loss_options(config)
  if deterministic is None:
    deterministic = not config.model.get('dropout', 0.0) > 0.0
  schedule = diffusion.make_schedule(opts.beta_schedule, opts.num_timesteps)
  input_ids_BxS = jnp.asarray(batch['input_ids']).astype(jnp.int32)
  latents_BxD = _latents_2d(jnp.asarray(batch['latent']))
  batch_size = input_ids_BxS.shape[0]
  mask = batch.get('attention_mask')
  mask_BxS = None if mask is None else jnp.asarray(mask).astype(bool)  # None: the model skips masking
  zeros_B = jnp.zeros((batch_size,), jnp.float32)
  ones_B = jnp.ones((batch_size,), jnp.float32)
  all_mask_tokens_BxS = jnp.full_like(input_ids_BxS, opts.mask_token_id)
  round1_key, round2_key = (None, None) if deterministic else jax.random.split(draws['dropout_key'])
  t_lat_B = jnp.asarray(draws['t_lat'], jnp.float32)

  # Round 1: base T2L (clean text -> noised latent) and base L2T (all-[MASK] text, clean latent).
  z_t_BxD, target_BxD = diffusion.add_noise(schedule, latents_BxD, t_lat_B, draws['noise'], opts.parameterization)
  (_, latent_pred_BxD), (l2t_logits_BxSxV, _) = run_passes(
      model, params,
      [ModelPass(input_ids_BxS, z_t_BxD, zeros_B, t_lat_B, mask_BxS),
       ModelPass(all_mask_tokens_BxS, latents_BxD, ones_B, zeros_B, mask_BxS)],
      deterministic=deterministic, dropout_key=round1_key, text_logits_wanted=(False, True))
  base_t2l = jnp.clip(normalized_mse(latent_pred_BxD, target_BxD), 0.0, LATENT_LOSS_MAX)
  base_l2t = jnp.clip(text_cross_entropy(l2t_logits_BxSxV, input_ids_BxS), 0.0, TEXT_LOSS_MAX)

  # Round 2: cycle text (L2T on the T2L pass's x0 estimate) and, if on, cycle latent (T2L on
  # the L2T pass's pseudo tokens with fresh t2 and noise2).
  x0_pred_BxD = diffusion.predict_x0(schedule, z_t_BxD, t_lat_B, latent_pred_BxD, opts.parameterization)
  x0_cycle_BxD = jax.lax.stop_gradient(x0_pred_BxD) if opts.cycle_stop_grad_latent else x0_pred_BxD
  passes = [ModelPass(all_mask_tokens_BxS, x0_cycle_BxD, ones_B, zeros_B, mask_BxS)]
  if opts.cycle_latent_on:
    pseudo_tokens_BxS = sample_pseudo_tokens(l2t_logits_BxSxV, opts.cycle_latent_sampling, draws['sample_key'])
    t_lat2_B = jnp.asarray(draws['t_lat2'], jnp.float32)
    z_t2_BxD, target2_BxD = diffusion.add_noise(schedule, latents_BxD, t_lat2_B, draws['noise2'],
                                                opts.parameterization)
    passes.append(ModelPass(pseudo_tokens_BxS, z_t2_BxD, zeros_B, t_lat2_B, mask_BxS))
  round2 = run_passes(model, params, passes, deterministic=deterministic, dropout_key=round2_key,
                      text_logits_wanted=(True, False)[:len(passes)])
  cycle_text = jnp.clip(text_cross_entropy(round2[0][0], input_ids_BxS), 0.0, TEXT_LOSS_MAX)
  cycle_latent = jnp.zeros((), jnp.float32)
  if opts.cycle_latent_on:
    cycle_latent = jnp.clip(normalized_mse(round2[1][1], target2_BxD), 0.0, LATENT_LOSS_MAX)

  cycle_text_weight = ramp_weight(step, opts.cycle_text_weight, opts.cycle_text_warmup_steps,
                                  opts.cycle_text_ramp_steps)
  cycle_latent_weight = ramp_weight(step, opts.cycle_latent_weight, opts.cycle_latent_warmup_steps,
                                    opts.cycle_latent_ramp_steps)
  loss = (opts.latent_loss_weight * base_t2l + base_l2t + cycle_text_weight * cycle_text
          + cycle_latent_weight * cycle_latent)

  metrics = dict(
      loss=loss,
      base_t2l_latent_loss=base_t2l,
      base_l2t_text_loss=base_l2t,
      cycle_text_loss=cycle_text,
      cycle_text_weight=cycle_text_weight,
      cycle_latent_loss=cycle_latent,
      cycle_latent_weight=cycle_latent_weight,
      t_lat_mean=jnp.mean(t_lat_B),
      latent_pred_norm=_mean_l2_norm(latent_pred_BxD),
      x0_pred_norm=_mean_l2_norm(x0_pred_BxD),
  )
  metrics = {k: jax.lax.stop_gradient(jnp.asarray(v, jnp.float32)) for k, v in metrics.items()}
  return loss, metrics
