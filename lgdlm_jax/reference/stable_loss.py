"""A PyTorch statement of latentDLM's stable trainer loss (docs/reference.md, "Pretraining modes").

Written from the meaning of `latentDLM_mmdit/improved_trainer_stable.py` (MultimodalDiffusionTrainer_new), not
copied: text masking at rate (1 - 1e-4) * clip(t, 1e-4, 1), one model call, the masked-position mean of the
cross-entropy clamped to [0, 100] and the clamped normalised MSE of the latent, in the three modes. Deliberate
differences: the draws come in from the caller (t_text, t_latent, mask_uniform, noise), everything is float32,
nothing is substituted for non-finite values, and the diffusion tables and parameterization are passed in (the
reference always uses cosine / epsilon).
"""

import torch
import torch.nn.functional as F

MASK_EPS = 1e-4


def _noised(tables, x0, t, noise, parameterization):
  sqrt_abar, sqrt_one_minus_abar = tables
  index = (t * (sqrt_abar.shape[0] - 1)).long().clamp(0, sqrt_abar.shape[0] - 1)
  a, s = sqrt_abar[index][:, None], sqrt_one_minus_abar[index][:, None]
  target = {'epsilon': noise, 'x0': x0, 'v_param': a * noise - s * x0}[parameterization]
  return a * x0 + s * noise, target


def stable_loss(
  model, batch, draws, mode: str, mask_token_id: int, latent_loss_weight: float, tables, parameterization
):
  """(total loss tensor, {term: tensor}) of one batch in `mode` ('unconditional', 'l2t' or 't2l').

  batch: input_ids long [B,S], attention_mask bool [B,S], latent [B,D]; draws: t_text, t_latent [B],
  mask_uniform [B,S], noise [B,D].
  """
  ids, mask, x0 = batch['input_ids'], batch['attention_mask'], batch['latent']
  batch_size = ids.shape[0]
  zeros, ones = torch.zeros(batch_size), torch.ones(batch_size)
  if mode == 'unconditional':
    t_text, t_latent = draws['t_text'], draws['t_latent']
    p = (1 - MASK_EPS) * t_text.clamp(MASK_EPS, 1.0)
    text = torch.where(draws['mask_uniform'] < p[:, None], torch.full_like(ids, mask_token_id), ids)
    latent, target = _noised(tables, x0, t_latent, draws['noise'], parameterization)
    masked = (text == mask_token_id).float()
  elif mode == 'l2t':
    t_text, t_latent = ones, zeros
    text, latent, target = torch.full_like(ids, mask_token_id), x0, None
    masked = torch.ones(ids.shape)
  else:
    t_text, t_latent = zeros, ones
    text = ids
    latent, target = _noised(tables, x0, t_latent, draws['noise'], parameterization)
    masked = None
  logits, latent_pred = model(text, latent.unsqueeze(1), t_text, t_latent, mask)[:2]
  terms, total = {}, torch.zeros(())
  if mode in ('unconditional', 'l2t') and masked.sum() > 0:
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction='none').reshape(ids.shape)
    terms['text_loss'] = torch.clamp((ce * masked).sum() / (masked.sum().clamp(min=1) + 1e-8), 0.0, 100.0)
    total = total + terms['text_loss']
  if mode in ('unconditional', 't2l'):
    u = F.normalize(latent_pred, p=2, dim=-1, eps=1e-8)
    v = F.normalize(target.unsqueeze(1), p=2, dim=-1, eps=1e-8)
    terms['latent_loss'] = torch.clamp(F.mse_loss(u, v), 0.0, 10.0)
    total = total + latent_loss_weight * terms['latent_loss']
  terms['loss'] = total
  return total, terms
