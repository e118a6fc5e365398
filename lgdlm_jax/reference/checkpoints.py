"""How the PyTorch reference writes and loads checkpoints (its code is not installable), for the conversion tests.

Written from the meaning of the reference's code, not copied:
- the cycle trainer (`cycle_vae_impl`): its trainer module wraps the model as `self.model`, so its
  state dict's keys carry `model.`; `save_checkpoint` torch.saves {model_state_dict,
  optimizer_state_dict, step, cfg, rng_torch, rng_cuda} to RUN/checkpoints/step_N.pt and latest.pt
  after micro-batch N (N > 0, every save_every); `--resume` loads it with torch.load's default
  (weights_only=True), `load_state_dict(strict=True)` into the trainer, the optimizer state, and
  restarts its loop at `step`;
- latentDLM (`latentDLM_mmdit.checkpoints_mmdit`): `save_checkpoint` pickles {model_state_dict,
  optimizer_state_dict, state: TrainingState, config} to RUN/latest/checkpoint.pt, the
  TrainingState being a dataclass of the reference's own module; its samplers torch.load with
  weights_only=False, build the model from checkpoint['config']['model'] (vocabulary from
  text_head.weight, no cluster head), strip a `model.` prefix and load with strict=True.
"""

import dataclasses
import os
import sys
import types

import torch

from lgdlm_jax.reference import model as reference_model


class CycleTrainer(torch.nn.Module):
  """The cycle trainer's module: the model as `self.model` and no parameters of its own."""

  def __init__(self, model: torch.nn.Module):
    super().__init__()
    self.model = model


class LatentDLMTrainer(torch.nn.Module):
  """latentDLM's trainer module as its checkpoints show it: the model as `self.model` and its text noise
  schedule, whose buffers (log_prior, log_gamma, log_B) are saved beside the model's parameters; it has no
  parameters of its own, so its optimizer's are the model's. (The buffers' values are its trainer's
  constants; nothing here reads them.)"""

  def __init__(self, model: torch.nn.Module):
    super().__init__()
    self.model = model
    self.text_noise_schedule = torch.nn.Module()
    for name in ('log_prior', 'log_gamma', 'log_B'):
      self.text_noise_schedule.register_buffer(name, torch.zeros(()))


def cycle_cfg(model_config, **sections) -> dict:
  """The plain dict the cycle trainer saves as `cfg` (its YAML after overrides), model section first."""
  model = {
    k: model_config[k]
    for k in (
      'hidden_size',
      'n_blocks',
      'cond_dim',
      'max_seq_len',
      'latent_dim',
      'num_residual_streams',
      'cluster_size',
      'dropout',
    )
  }
  return {'model': dict(model, n_heads=4, qk_rmsnorm=True, use_stub_if_no_mmdit=True), **sections}


def save_cycle_checkpoint(path, trainer: CycleTrainer, optimizer, step: int, cfg: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  torch.save(
    {
      'model_state_dict': trainer.state_dict(),
      'optimizer_state_dict': optimizer.state_dict(),
      'step': int(step),
      'cfg': cfg,
      'rng_torch': torch.get_rng_state(),
      'rng_cuda': None,
    },
    path,
  )


def save_cycle_run(run_dir, trainer: CycleTrainer, optimizer, step: int, cfg: dict) -> None:
  """What the cycle trainer's loop writes at a save step: step_N.pt and latest.pt."""
  for name in (f'step_{step}.pt', 'latest.pt'):
    save_cycle_checkpoint(os.path.join(run_dir, 'checkpoints', name), trainer, optimizer, step, cfg)


def resume_cycle_trainer(path, trainer: CycleTrainer, optimizer) -> int:
  """The cycle trainer's --resume: strict weights, the optimizer state, and the step it restarts at."""
  checkpoint = torch.load(path, map_location='cpu')  # torch's default: weights_only=True
  trainer.load_state_dict(checkpoint['model_state_dict'], strict=True)
  if checkpoint.get('optimizer_state_dict') is not None:
    optimizer.load_state_dict(checkpoint['optimizer_state_dict'])
  return int(checkpoint.get('step', 0))


def save_latentdlm_checkpoint(directory, trainer: torch.nn.Module, optimizer, step: int, config: dict | None) -> None:
  """latentDLM's save_checkpoint, its TrainingState a class of a module that is importable only while
  the file is written (as for a user without the reference's code)."""
  module_name = 'latentDLM_mmdit.checkpoints_mmdit'
  module = types.ModuleType(module_name)

  @dataclasses.dataclass
  class TrainingState:
    epoch: int = 0
    epoch_start_step: int = 0
    step: int = 0
    total_tokens: int = 0
    total_flops: float = 0.0
    start_time: float = 0.0
    curr_time: float = 0.0

  TrainingState.__module__, TrainingState.__qualname__ = module_name, 'TrainingState'
  module.TrainingState = TrainingState
  package = types.ModuleType('latentDLM_mmdit')
  package.checkpoints_mmdit = module
  sys.modules.update({'latentDLM_mmdit': package, module_name: module})
  try:
    os.makedirs(directory, exist_ok=True)
    torch.save(
      {
        'model_state_dict': trainer.state_dict(),
        'optimizer_state_dict': optimizer.state_dict(),
        'state': TrainingState(step=step),
        'config': config,
      },
      os.path.join(directory, 'checkpoint.pt'),
    )
  finally:
    del sys.modules['latentDLM_mmdit'], sys.modules[module_name]


def load_like_latentdlm_sampler(path, model_config_defaults) -> torch.nn.Module:
  """latentDLM's samplers: the model built from the file's config (vocabulary from text_head.weight,
  cluster_size 0), `model.` stripped, strict=True. `model_config_defaults` supplies the keys the
  reference's config does not carry (our twin reads them all)."""
  checkpoint = torch.load(path, map_location='cpu', weights_only=False)
  state_dict = checkpoint['model_state_dict']
  model_section = dict(checkpoint['config']['model'])
  model_section['vocab_size'] = next(v.shape[0] for k, v in state_dict.items() if 'text_head.weight' in k)
  model_config = model_config_defaults.copy_and_resolve_references()
  model_config.update({k: v for k, v in model_section.items() if k in model_config}, cluster_size=0)
  model = reference_model.ReferenceMultimodalMMDiT(model_config)
  model.load_state_dict(
    {k[len('model.') :] if k.startswith('model.') else k: v for k, v in state_dict.items()}, strict=True
  )
  return model
