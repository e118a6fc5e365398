"""A PyTorch statement of the reference trainer's cycle_vae loss (docs/reference.md, section 3).

Written from the meaning of `cycle_vae_impl/trainers/cycle_vae_trainer.py`, not copied: four
SEPARATE model calls in the reference's order, its ramp formula in Python floats, F.normalize,
F.cross_entropy and torch.clamp. Differences from the reference, all deliberate:
- latent_pred [B,1,D] is squeezed to [B,D] (the reference's crashing shape defect);
- the random draws come in from the caller (t_lat, noise, t_lat2, noise2), so that the JAX side
  can be fed the very same numbers;
- no NaN substitution;
- argmax pseudo tokens only (categorical sampling cannot match across frameworks);
- the diffusion tables are passed in (the JAX ones; their parity with the reference's float32
  tables is tests/diffusion_test.py's business, and near t = 1 a 4e-5 relative difference in
  sqrt(abar) would swamp this comparison in the epsilon parameterization).
"""

import torch
import torch.nn.functional as F


def ramp_weight(step, base: float, warmup_steps: int, ramp_steps: int) -> float:
  if step is None:
    return base
  if base <= 0.0:
    return 0.0
  warmup_steps, ramp_steps = max(0, int(warmup_steps)), max(0, int(ramp_steps))
  if int(step) < warmup_steps:
    return 0.0
  if ramp_steps <= 0:
    return base
  return base * min(1.0, (int(step) - warmup_steps) / float(ramp_steps))


def _coefficients(tables, t):
  sqrt_abar, sqrt_one_minus_abar = tables
  index = (t * (sqrt_abar.shape[0] - 1)).long().clamp(0, sqrt_abar.shape[0] - 1)
  return sqrt_abar[index][:, None], sqrt_one_minus_abar[index][:, None]


def _add_noise(tables, x0, t, noise, parameterization):
  a, s = _coefficients(tables, t)
  z_t = a * x0 + s * noise
  target = {'epsilon': noise, 'x0': x0, 'v_param': a * noise - s * x0}[parameterization]
  return z_t, target


def _predict_x0(tables, z_t, t, out, parameterization):
  a, s = _coefficients(tables, t)
  if parameterization == 'epsilon':
    return (z_t - s * out) / a
  if parameterization == 'x0':
    return out
  return a * z_t - s * out


def _normalized_mse(pred, target):
  return F.mse_loss(F.normalize(pred, p=2, dim=-1, eps=1e-8), F.normalize(target, p=2, dim=-1, eps=1e-8))


def _text_ce(logits, target):
  return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def cycle_vae_loss(model, batch, draws, step, loss_cfg, mask_token_id: int, parameterization: str, tables):
  """Returns (total loss tensor, dict of the clamped unweighted terms and weights as tensors/floats).

  batch / draws hold torch tensors: input_ids long [B,S], attention_mask bool [B,S], latent [B,D];
  t_lat, t_lat2 [B], noise, noise2 [B,D].
  """
  input_ids, mask, latents = batch['input_ids'], batch['attention_mask'], batch['latent']
  batch_size = input_ids.shape[0]
  # As the reference: clean / fully-masked timesteps on the batch's device, in the latents' dtype.
  like = dict(device=input_ids.device, dtype=latents.dtype)
  zeros, ones = torch.zeros(batch_size, **like), torch.ones(batch_size, **like)
  t_lat = draws['t_lat']

  z_t, target = _add_noise(tables, latents, t_lat, draws['noise'], parameterization)
  latent_pred = model(input_ids, z_t.unsqueeze(1), zeros, t_lat, mask)[1].squeeze(1)
  base_t2l = torch.clamp(_normalized_mse(latent_pred, target), 0.0, 10.0)

  all_mask = torch.full_like(input_ids, mask_token_id)
  l2t_logits = model(all_mask, latents.unsqueeze(1), ones, zeros, mask)[0]
  base_l2t = torch.clamp(_text_ce(l2t_logits, input_ids), 0.0, 100.0)

  x0_pred = _predict_x0(tables, z_t, t_lat, latent_pred, parameterization)
  x0_cycle = x0_pred.detach() if loss_cfg.cycle_stop_grad_latent else x0_pred
  cycle_logits = model(all_mask, x0_cycle.unsqueeze(1), ones, zeros, mask)[0]
  cycle_text = torch.clamp(_text_ce(cycle_logits, input_ids), 0.0, 100.0)
  w_text = ramp_weight(
    step, loss_cfg.cycle_text_weight, loss_cfg.cycle_text_warmup_steps, loss_cfg.cycle_text_ramp_steps
  )

  w_latent = ramp_weight(
    step, loss_cfg.cycle_latent_weight, loss_cfg.cycle_latent_warmup_steps, loss_cfg.cycle_latent_ramp_steps
  )
  cycle_latent = torch.zeros(())
  if w_latent > 0.0:
    assert loss_cfg.cycle_latent_sampling == 'argmax'
    with torch.no_grad():
      pseudo = torch.argmax(l2t_logits, dim=-1)
    z_t2, target2 = _add_noise(tables, latents, draws['t_lat2'], draws['noise2'], parameterization)
    latent_pred2 = model(pseudo, z_t2.unsqueeze(1), zeros, draws['t_lat2'], mask)[1].squeeze(1)
    cycle_latent = torch.clamp(_normalized_mse(latent_pred2, target2), 0.0, 10.0)

  total = (
    loss_cfg.latent_loss_weight * base_t2l + base_l2t + float(w_text) * cycle_text + float(w_latent) * cycle_latent
  )
  terms = dict(
    loss=total,
    base_t2l_latent_loss=base_t2l,
    base_l2t_text_loss=base_l2t,
    cycle_text_loss=cycle_text,
    cycle_text_weight=w_text,
    cycle_latent_loss=cycle_latent,
    cycle_latent_weight=w_latent,
    t_lat_mean=t_lat.mean(),
    latent_pred_norm=latent_pred.norm(dim=-1).mean(),
    x0_pred_norm=x0_pred.norm(dim=-1).mean(),
  )
  return total, terms
