"""A PyTorch twin of the reference MultimodalMMDiT, built around the real pinned `mmdit`.

The glue (encoders, timestep conditioning, heads) is written here from docs/reference.md (section 1) with the
reference's state-dict names; the backbone is `mmdit.mmdit_generalized_pytorch.MMDiT` itself. It is what
`convert --verify` (lgdlm_jax/convert/verify.py), the parity tests and the benchmarks against PyTorch run.
"""

import math

from mmdit.mmdit_generalized_pytorch import MMDiT
import torch
from torch import nn
import torch.nn.functional as F


class TimestepEmbedder(nn.Module):
  def __init__(self, cond_dim: int, frequency_dim: int = 256):
    super().__init__()
    self.frequency_dim = frequency_dim
    self.mlp = nn.Sequential(nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

  def forward(self, t: torch.Tensor) -> torch.Tensor:
    half = self.frequency_dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype))


class Conditioning(nn.Module):
  def __init__(self, cond_dim: int):
    super().__init__()
    self.text_sigma_map = TimestepEmbedder(cond_dim)
    self.latent_sigma_map = TimestepEmbedder(cond_dim)
    self.combine = nn.Sequential(nn.Linear(2 * cond_dim, 4 * cond_dim), nn.SiLU(), nn.Linear(4 * cond_dim, cond_dim))

  def forward(self, text_t: torch.Tensor, latent_t: torch.Tensor) -> torch.Tensor:
    both = torch.cat([F.silu(self.text_sigma_map(text_t)), F.silu(self.latent_sigma_map(latent_t))], dim=-1)
    return self.combine(both)


class TextEncoder(nn.Module):
  def __init__(self, vocab_size: int, hidden: int, max_len: int):
    super().__init__()
    self.token_embed = nn.Embedding(vocab_size, hidden)
    self.position_embed = nn.Parameter(torch.randn(1, max_len, hidden) * 0.02)

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    return self.token_embed(tokens) + self.position_embed[:, : tokens.shape[1]]


class LatentEncoder(nn.Module):
  def __init__(self, latent_dim: int, hidden: int):
    super().__init__()
    self.projection = nn.Sequential(
      nn.Linear(latent_dim, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)
    )
    self.position_embed = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)

  def forward(self, latents: torch.Tensor) -> torch.Tensor:
    return self.projection(latents) + self.position_embed


class ReferenceMultimodalMMDiT(nn.Module):
  """Same forward contract as the reference: (tokens, latents, t_text, t_latent, mask) -> outputs."""

  def __init__(self, cfg):
    super().__init__()
    h = cfg.hidden_size
    self.cluster_size = cfg.cluster_size
    self.text_encoder = TextEncoder(cfg.vocab_size, h, cfg.max_seq_len)
    self.latent_encoder = LatentEncoder(cfg.latent_dim, h)
    self.conditioning = Conditioning(cfg.cond_dim)
    # The reference's call (qk_rmsnorm is ignored by the block) plus the attention width, which the
    # reference never passes: at the defaults 8 x 64 (mmdit's own) the call is exactly the reference's.
    self.mmdit = MMDiT(
      depth=cfg.n_blocks,
      dim_modalities=(h, h),
      dim_cond=cfg.cond_dim,
      qk_rmsnorm=True,
      num_residual_streams=cfg.num_residual_streams,
      heads=cfg.num_heads,
      dim_head=cfg.head_dim,
    )
    self.text_head = nn.Linear(h, cfg.vocab_size)
    self.latent_head = nn.Sequential(
      nn.Linear(h, 2 * h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(2 * h, cfg.latent_dim)
    )
    if cfg.cluster_size > 0:
      self.text_head_clusters = nn.Linear(h, cfg.vocab_size)

  def forward(self, tokens, latents, text_t=None, latent_t=None, attention_mask=None):
    batch = tokens.shape[0]
    text_t = torch.zeros(batch, device=tokens.device) if text_t is None else text_t
    latent_t = torch.zeros(batch, device=tokens.device) if latent_t is None else latent_t
    if latents.dim() == 2:
      latents = latents.unsqueeze(1)
    elif latents.shape[1] > 1:
      latents = latents.mean(dim=1, keepdim=True)
    text_emb = self.text_encoder(tokens)
    latent_emb = self.latent_encoder(latents)
    c = self.conditioning(text_t, latent_t)
    text_mask = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    latent_mask = torch.ones(latent_emb.shape[:2], dtype=torch.bool, device=latent_emb.device)
    text_out, latent_out = self.mmdit(
      modality_tokens=(text_emb, latent_emb), modality_masks=(text_mask, latent_mask), time_cond=c
    )
    outputs = (self.text_head(text_out), self.latent_head(latent_out))
    if self.cluster_size > 0:
      outputs += (self.text_head_clusters(text_out),)
    return outputs
