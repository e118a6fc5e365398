"""The PyTorch reference's train step, for the benchmarks that time lgdlm_jax against it.

lgdlm_jax.reference.model (glue around the real pinned `mmdit` backbone, hence the real
x_transformers attention and hyper_connections), lgdlm_jax.reference.cycle_loss's statement of the
reference loss (four separate model calls), then loss.backward(), clip_grad_norm_ and
torch.optim.AdamW.step(), on one device.

precision:
  float32   everything in float32 (the CPU benchmark);
  bfloat16  the reference's own way: its train script casts the model with `.to(dtype)` and its
            trainer casts latents and timesteps to that dtype, so parameters, activations and AdamW
            state are all bfloat16;
  autocast  float32 parameters and AdamW, forward and loss under torch.autocast(bfloat16): what
            lgdlm_jax's bfloat16 configs do (float32 master weights, bfloat16 matmuls).
"""

import contextlib
import time

import ml_collections
import numpy as np
import torch

from lgdlm_jax.objective import diffusion
from lgdlm_jax.reference import cycle_loss
from lgdlm_jax.reference import model as reference_model

PRECISIONS = ('float32', 'bfloat16', 'autocast')


def synchronize(device: torch.device) -> None:
  """Waits for the device's queued work (CUDA runs asynchronously; the CPU does not)."""
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


class TorchTrainer:
  """The reference train step: cycle loss over four model calls, backward, clip, AdamW."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    host_batch: dict[str, np.ndarray],
    device: str = 'cpu',
    precision: str = 'float32',
  ):
    if precision not in PRECISIONS:
      raise ValueError(f'precision={precision!r} is not one of {PRECISIONS}')
    torch.manual_seed(0)
    self.config = config
    self.device = torch.device(device)
    self.precision = precision
    # Parameters (and with them activations and AdamW state) in bfloat16 only for the reference's way.
    self.dtype = torch.bfloat16 if precision == 'bfloat16' else torch.float32
    self.model = reference_model.ReferenceMultimodalMMDiT(config.model).to(self.device, self.dtype).train()
    opt = config.optimizer
    self.optimizer = torch.optim.AdamW(
      self.model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay
    )
    schedule = diffusion.make_schedule(config.model.latent_beta_schedule, config.model.latent_timesteps)
    self.tables = tuple(
      torch.tensor(np.asarray(table), device=self.device, dtype=self.dtype)
      for table in (schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod)
    )
    self.batch = dict(
      input_ids=torch.from_numpy(host_batch['input_ids']).long().to(self.device),
      attention_mask=torch.from_numpy(host_batch['attention_mask']).to(self.device),
      latent=torch.from_numpy(host_batch['latent']).to(self.device, self.dtype),
    )
    self.generator = torch.Generator(self.device).manual_seed(1)
    self.step = 0
    self.loss = float('nan')
    self.step_seconds: list[float] = []  # of timed steps: background load on a shared machine shows up here

  def _draws(self) -> dict[str, torch.Tensor]:
    # As lgdlm_jax.objective.cycle_vae draws them: t = 1 in latent_t_mode 'full', else U(t_min, t_max) clamped
    # to <= 0.9999.
    # As lgdlm_jax.objective.draws draws them: t = 1 in latent_t_mode 'full', else U(t_min, t_max) clamped to <= 0.9999.
    loss_cfg, (b, d) = self.config.loss, self.batch['latent'].shape
    options = dict(generator=self.generator, device=self.device)

    def latent_t() -> torch.Tensor:
      if loss_cfg.latent_t_mode == 'full':
        return torch.ones(b, device=self.device)
      uniform = torch.rand(b, **options)
      return (
        loss_cfg.cycle_latent_t_min + (loss_cfg.cycle_latent_t_max - loss_cfg.cycle_latent_t_min) * uniform
      ).clamp(max=diffusion.MAX_RANDOM_T)

    draws = dict(
      t_lat=latent_t(), noise=torch.randn(b, d, **options), t_lat2=latent_t(), noise2=torch.randn(b, d, **options)
    )
    return {k: v.to(self.dtype) for k, v in draws.items()}

  def autocast(self) -> contextlib.AbstractContextManager:
    """torch.autocast(bfloat16) in the 'autocast' precision, else nothing."""
    if self.precision == 'autocast':
      return torch.autocast(self.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def _forward(self) -> torch.Tensor:
    cfg = self.config
    with self.autocast():
      total, _ = cycle_loss.cycle_vae_loss(
        self.model,
        self.batch,
        self._draws(),
        self.step,
        cfg.loss,
        cfg.tokenizer.mask_token_id,
        cfg.model.latent_parameterization,
        self.tables,
      )
    return total

  def _update(self) -> None:
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optimizer.grad_clip_norm)
    self.optimizer.step()
    self.step += 1

  def train_step(self) -> None:
    self.optimizer.zero_grad(set_to_none=True)
    total = self._forward()
    total.backward()
    self._update()
    # One host sync per step, for the loss (the reference's trainer makes about fifteen: .item()
    # on every metric and a NaN check on each loss term).
    self.loss = float(total.detach())

  def timed(self, steps: int) -> None:
    """Runs `steps` train steps, appending each one's seconds (every step ends in a host sync)."""
    for _ in range(steps):
      started = time.perf_counter()
      self.train_step()
      self.step_seconds.append(time.perf_counter() - started)

  def phase_seconds(self) -> dict[str, float]:
    """One train step with the device synchronised between its phases: seconds of each."""
    marks = [time.perf_counter()]

    def mark() -> None:
      synchronize(self.device)
      marks.append(time.perf_counter())

    self.optimizer.zero_grad(set_to_none=True)
    total = self._forward()
    mark()
    total.backward()
    mark()
    self._update()
    mark()
    return dict(zip(('forward_and_loss', 'backward', 'clip_and_adamw'), np.diff(marks).tolist()))
