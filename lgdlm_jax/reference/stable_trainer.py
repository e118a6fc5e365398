"""latentDLM's stable train step restated in PyTorch: the parameter groups frozen per mode, backward,
clip_grad_norm_ and one torch.optim.AdamW group (docs/reference.md, "Pretraining modes", "Frozen parameters").

A frozen parameter has grad None at the optimizer step, as has every parameter the loss does not reach; torch's
AdamW skips such a parameter entirely (no decay, no moment update, no step count), which is what
lgdlm_jax.training.freezing restates in optax.
"""

import torch

from lgdlm_jax.reference import stable_loss

# Lower-cased name substrings of each group; the text list is checked first, anything else is shared.
TEXT_GROUP = ('text_embed', 'text_head', 'vocab', 'token_embed', 'text_proj', 'text_norm', 'text_out', 'text_encoder')
LATENT_GROUP = (
  'latent_proj',
  'latent_head',
  'latent_embed',
  'latent_norm',
  'latent_out',
  'latent_linear',
  'latent_encoder',
)
FROZEN = {'unconditional': (), 'l2t': ('latent',), 't2l': ('text',)}


def parameter_group(name: str) -> str:
  name = name.lower()
  if any(part in name for part in TEXT_GROUP):
    return 'text'
  if any(part in name for part in LATENT_GROUP):
    return 'latent'
  return 'shared'


class StableTrainer:
  """model: lgdlm_jax.reference.model.ReferenceMultimodalMMDiT (float32)."""

  def __init__(self, model, *, betas, eps, weight_decay, clip_norm, mask_token_id, latent_loss_weight, tables):
    self.model = model
    self.optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, betas=betas, eps=eps, weight_decay=weight_decay)
    self.clip_norm, self.mask_token_id, self.latent_loss_weight, self.tables = (
      clip_norm,
      mask_token_id,
      latent_loss_weight,
      tables,
    )

  def step(self, batch, draws, mode: str, lr: float, parameterization: str = 'epsilon') -> dict[str, float]:
    """One optimizer step on `batch` in `mode` at learning rate `lr`; the loss terms as floats."""
    frozen = FROZEN[mode]
    for name, p in self.model.named_parameters():
      p.requires_grad_(parameter_group(name) not in frozen)
    self.optimizer.zero_grad(set_to_none=True)
    total, terms = stable_loss.stable_loss(
      self.model, batch, draws, mode, self.mask_token_id, self.latent_loss_weight, self.tables, parameterization
    )
    total.backward()
    with_grads = [p for p in self.model.parameters() if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(with_grads, self.clip_norm)
    for group in self.optimizer.param_groups:
      group['lr'] = lr
    self.optimizer.step()
    for p in self.model.parameters():
      p.requires_grad_(True)
    return {k: float(v.detach()) for k, v in terms.items()}
