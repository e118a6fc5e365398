"""Unconditional sampling: text and latent generated together, or in the reference's two stages.

    tokens_BxS, latents_BxD = sample_joint(params, rng, model=model, config=config, batch=B, seq_len=S, steps=N)
    tokens_BxS, latents_BxD = sample_two_stage(params, rng, model=model, config=config, batch=B, seq_len=S,
                                               text_steps=N, latent_steps=M)

Joint (what latentDLM's unconditional mode trains: text masked at a rate t_x and the latent noised
at t_z in the same model call): N rounds, round i at text t = 1 - i/N and latent t going down the
T2L sampler's DDIM grid from t2l_start_time to 0, one model call each. The text half of a round is
the L2T sampler's confidence-ordered unmasking (the same schedule and truncations), the latent half
a DDIM step, each reading the other's current, partly denoised state.

Two stages (the reference's `sample_unconditional_fixed.py`): a T2L sample on the null condition
(all [PAD], nothing visible), then an L2T sample from that latent. The reference's own stage 1 is a
damped fixed-point iteration rather than DDIM, and its stage 2 decodes every position in the first
round; neither is reproduced.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lgdlm_jax.evaluation import samplers
from lgdlm_jax.model.passes import apply_model
from lgdlm_jax.objective import diffusion

Params = Any
DEFAULT_SAMPLING = samplers.TokenSampling()


def sample_joint(
  params: Params,
  rng: jax.Array,
  *,
  model: nn.Module,
  config: ml_collections.ConfigDict,
  batch: int,
  seq_len: int,
  steps: int,
  sampling: samplers.TokenSampling = DEFAULT_SAMPLING,
) -> tuple[jax.Array, jax.Array]:
  """(tokens int32 [B,S] with no [MASK] left, latents [B,D]): text and latent denoised together."""
  if steps < 1:
    raise ValueError(f'steps={steps} must be positive')
  sampling.check()
  schedule = diffusion.schedule_from_config(config.model)
  parameterization = config.model.latent_parameterization
  latent_times = jnp.linspace(samplers.t2l_start_time(config), 0.0, steps + 1, dtype=jnp.float32)
  text_times = 1.0 - jnp.arange(steps, dtype=jnp.float32) / steps
  counts = jnp.asarray(samplers.unmask_counts(seq_len, steps))
  noise_key, *round_keys = jax.random.split(rng, steps + 1)
  banned_V = samplers.banned_ids(config)
  tokens_BxS = jnp.full((batch, seq_len), config.tokenizer.mask_token_id, jnp.int32)
  decoded_BxS = jnp.zeros((batch, seq_len), bool)
  z_BxD = jax.random.normal(noise_key, (batch, config.model.latent_dim), jnp.float32)

  def round_(carry, inputs):
    tokens_BxS, decoded_BxS, z_BxD = carry
    text_t, latent_t, latent_t_prev, count, key = inputs
    logits_BxSxV, output_BxD = apply_model(model, params, tokens_BxS, z_BxD, text_t, latent_t, None)
    tokens_BxS, decoded_BxS = samplers.unmask_round(
      tokens_BxS, decoded_BxS, logits_BxSxV, count, key, sampling, banned_V
    )
    eps_BxD = diffusion.predict_eps(schedule, z_BxD, latent_t, output_BxD, parameterization)
    z_BxD, x0_BxD = diffusion.ddim_step(schedule, z_BxD, latent_t, latent_t_prev, eps_BxD)
    return (tokens_BxS, decoded_BxS, z_BxD), x0_BxD

  inputs = (text_times, latent_times[:-1], latent_times[1:], counts, jnp.stack(round_keys))
  (tokens_BxS, _, _), x0_NxBxD = jax.lax.scan(round_, (tokens_BxS, decoded_BxS, z_BxD), inputs)
  return tokens_BxS, x0_NxBxD[-1]


def sample_two_stage(
  params: Params,
  rng: jax.Array,
  *,
  model: nn.Module,
  config: ml_collections.ConfigDict,
  batch: int,
  seq_len: int,
  text_steps: int,
  latent_steps: int,
  sampling: samplers.TokenSampling = DEFAULT_SAMPLING,
) -> tuple[jax.Array, jax.Array]:
  """(tokens [B,S], latents [B,D]): a T2L sample on the null condition, then L2T from it."""
  latent_key, text_key = jax.random.split(rng)
  null_tokens_BxS, null_mask_BxS = samplers.null_condition(batch, seq_len, config.tokenizer.pad_token_id)
  latents_BxD = samplers.sample_t2l(
    params, null_tokens_BxS, null_mask_BxS, latent_key, model=model, config=config, steps=latent_steps
  )
  tokens_BxS = samplers.sample_l2t(
    params, latents_BxD, text_key, model=model, config=config, seq_len=seq_len, steps=text_steps, **sampling._asdict()
  )
  return tokens_BxS, latents_BxD
