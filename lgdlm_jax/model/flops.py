"""Matmul FLOPs of the model's forward pass, counted from its shapes (what MFU is measured against)."""

import ml_collections


def _text_head_flops(model_config: ml_collections.ConfigDict) -> float:
  """One vocabulary projection (text or cluster head) over S tokens."""
  return 2 * model_config.hidden_size * model_config.vocab_size * model_config.max_seq_len


def attention_flops_per_sequence(model_config: ml_collections.ConfigDict) -> float:
  """The attention core's matmuls (scores and weighted values, every query over all S + 1 keys)
  in one forward pass over one sequence, all blocks."""
  n = model_config.max_seq_len + 1
  return model_config.n_blocks * n * 2 * 2 * n * model_config.num_heads * model_config.head_dim


def forward_flops_per_sequence(
  model_config: ml_collections.ConfigDict, *, text_logits: bool, cluster_logits: bool = False
) -> float:
  """Matmul FLOPs of one forward pass over one sequence of S text tokens and one latent token.

  text_logits / cluster_logits: whether the pass computes the text / cluster head (a caller that
  reads neither, e.g. a pass whose text logits are unused, lets XLA drop them).
  """
  h, s = model_config.hidden_size, model_config.max_seq_len
  inner = model_config.num_heads * model_config.head_dim
  n = s + 1
  qkv, out, mlp = 2 * h * 3 * inner, 2 * inner * h, 2 * 2 * h * 4 * h  # per token
  latent = 2 * (model_config.latent_dim * 2 * h + 2 * h * h) * 2  # encoder + head
  flops = model_config.n_blocks * n * (qkv + out + mlp) + attention_flops_per_sequence(model_config) + latent
  return flops + _text_head_flops(model_config) * (int(text_logits) + int(cluster_logits))
