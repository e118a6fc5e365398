"""A tiny model config, the PyTorch twin and the same weights in Flax, and seeded model inputs."""

import functools
import random

import ml_collections
import numpy as np
import torch

from lgdlm_jax import config as config_lib
from lgdlm_jax import convert
from lgdlm_jax.objective import diffusion
from lgdlm_jax.reference import model as reference_model
from lgdlm_jax.reference import stable_trainer


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  cfg = config_lib.default_config().model
  cfg.update(
    vocab_size=97,
    hidden_size=64,
    n_blocks=2,
    cond_dim=48,
    max_seq_len=16,
    latent_dim=8,
    num_residual_streams=2,
    cluster_size=0,
    dropout=0.0,
    dtype='float32',
    remat_policy='none',
  )
  with cfg.ignore_type():
    cfg.update(overrides)
  return cfg


def torch_noise_tables(model_config: ml_collections.ConfigDict) -> tuple[torch.Tensor, torch.Tensor]:
  """The latent schedule's sqrt(alpha_bar) and sqrt(1 - alpha_bar) per step, as the PyTorch twins index them."""
  return _noise_tables(model_config.latent_beta_schedule, model_config.latent_timesteps)


@functools.cache
def _noise_tables(schedule: str, timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
  table = diffusion.make_schedule(schedule, timesteps)
  return (
    torch.tensor(np.asarray(table.sqrt_alphas_cumprod)),
    torch.tensor(np.asarray(table.sqrt_one_minus_alphas_cumprod)),
  )


def stable_twin(config: ml_collections.ConfigDict, torch_model, mask_token_id: int) -> stable_trainer.StableTrainer:
  """The PyTorch twin of latentDLM's stable train step over `torch_model`, with the config's optimizer and loss."""
  opt = config.optimizer
  return stable_trainer.StableTrainer(
    torch_model,
    betas=(opt.beta1, opt.beta2),
    eps=opt.eps,
    weight_decay=opt.weight_decay,
    clip_norm=opt.grad_clip_norm,
    mask_token_id=mask_token_id,
    latent_loss_weight=config.loss.latent_loss_weight,
    tables=torch_noise_tables(config.model),
  )


# The samplers' tiny vocabulary and its [MASK] id.
MASK_ID = 3
VOCAB = 40


def sampler_config(**model_overrides) -> ml_collections.ConfigDict:
  """A whole config with a tiny model and tokenizer ids, for the samplers (model keys overridable)."""
  config = config_lib.default_config()
  config.model.update(
    vocab_size=VOCAB,
    hidden_size=32,
    n_blocks=1,
    cond_dim=32,
    max_seq_len=12,
    latent_dim=8,
    num_residual_streams=1,
    **model_overrides,
  )
  config.tokenizer.update(vocab_size=VOCAB, mask_token_id=MASK_ID)
  return config


def perturb_(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
  """Moves every parameter away from its init: several start at exactly 0 or 1, hiding mapping bugs."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(torch.randn(p.shape, generator=generator) * scale)


def build_pair(cfg, seed: int = 0, perturb: bool = True):
  """A perturbed reference torch model and the same weights converted to Flax params."""
  torch.manual_seed(seed)
  random.seed(seed)  # mHC picks its initial branch stream with random.randrange
  torch_model = reference_model.ReferenceMultimodalMMDiT(cfg).eval()
  if perturb:
    perturb_(torch_model, seed=seed)
  state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  return torch_model, convert.torch_to_flax(state, cfg)


def make_inputs(cfg, batch: int = 3, seq_len: int = 12, seed: int = 1, latent_shape: str = 'BxD'):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (batch, seq_len)).astype(np.int32)
  lengths = rng.integers(seq_len // 2, seq_len + 1, batch)
  lengths[0] = seq_len  # one row without padding
  mask = np.arange(seq_len)[None] < lengths[:, None]
  shape = {'BxD': (batch, cfg.latent_dim), 'Bx1xD': (batch, 1, cfg.latent_dim), 'BxKxD': (batch, 3, cfg.latent_dim)}
  latents = rng.standard_normal(shape[latent_shape]).astype(np.float32)
  text_t = rng.uniform(size=batch).astype(np.float32)
  latent_t = rng.uniform(size=batch).astype(np.float32)
  return tokens, latents, text_t, latent_t, mask
