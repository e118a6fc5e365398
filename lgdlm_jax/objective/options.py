"""The objective's options: everything it reads of the config, as one small frozen record built once.

    options = options_lib.from_config(config)   # when a step is made, never inside the loss
    loss, metrics = cycle_vae.cycle_vae_loss(params, batch, draws, step=step, model=model, options=options)

The record is hashable (its diffusion schedule, derived from the hashed schedule name and length,
takes no part in equality), so a jitted function may close over it or take it as a static argument.
"""

import dataclasses

import ml_collections

from lgdlm_jax.objective import cycle_schedule
from lgdlm_jax.objective import diffusion


@dataclasses.dataclass(frozen=True)
class ObjectiveOptions:
  """The static (trace-time) choices of the cycle_vae objective."""

  latent_loss_weight: float
  cycle: cycle_schedule.CycleSchedule
  cycle_latent_sampling: str  # 'argmax' or a categorical sample
  cycle_stop_grad_latent: bool
  mask_token_id: int
  parameterization: str
  latent_t_mode: str  # 'full': t = 1; else U(latent_t_min, latent_t_max) clamped to < 1
  latent_t_min: float
  latent_t_max: float
  dropout: bool  # model.dropout > 0: the training passes draw dropout masks
  beta_schedule: str
  num_timesteps: int
  text_positions: str  # 'all': the L2T cross-entropy over B*S positions (the reference's); 'valid': real tokens
  length_head: bool  # model.length_head: the length term runs
  length_loss_weight: float
  schedule: diffusion.DiffusionSchedule = dataclasses.field(compare=False, repr=False)


def from_config(config: ml_collections.ConfigDict) -> ObjectiveOptions:
  """The options of config.loss, the model's diffusion keys and dropout, and tokenizer.mask_token_id."""
  loss, model = config.loss, config.model
  return ObjectiveOptions(
    latent_loss_weight=loss.latent_loss_weight,
    cycle=cycle_schedule.from_config(config),
    cycle_latent_sampling=loss.cycle_latent_sampling,
    cycle_stop_grad_latent=loss.cycle_stop_grad_latent,
    mask_token_id=config.tokenizer.mask_token_id,
    parameterization=model.latent_parameterization,
    latent_t_mode=loss.latent_t_mode,
    latent_t_min=loss.cycle_latent_t_min,
    latent_t_max=loss.cycle_latent_t_max,
    dropout=model.dropout > 0.0,
    beta_schedule=model.latent_beta_schedule,
    num_timesteps=model.latent_timesteps,
    text_positions=loss.text_positions,
    length_head=model.length_head,
    length_loss_weight=loss.length_loss_weight,
    schedule=diffusion.schedule_from_config(model),
  )
