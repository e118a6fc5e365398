"""`convert_torch_weights.py --verify`: the PyTorch twin (lgdlm_jax.reference.model) and the Flax model on
one seeded batch. Needs the `reference` extra (torch and mmdit): import this module only where they are wanted.
"""

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import torch

from lgdlm_jax import model as model_lib
from lgdlm_jax.convert import files
from lgdlm_jax.convert import mapping
from lgdlm_jax.reference import model as reference_model

OUTPUT_NAMES = ('text_logits', 'latent_pred', 'cluster_logits')


def random_batch(
  model_config: ml_collections.ConfigDict, seed: int, batch: int = 2, max_len: int = 32
) -> tuple[np.ndarray, ...]:
  """Seeded (tokens, latents, text_t, latent_t, mask); the last row is half padding."""
  rng = np.random.default_rng(seed)
  seq_len = min(model_config.max_seq_len, max_len)
  tokens = rng.integers(0, model_config.vocab_size, (batch, seq_len)).astype(np.int32)
  mask = np.ones((batch, seq_len), bool)
  mask[-1, max(1, seq_len // 2) :] = False
  latents = rng.standard_normal((batch, model_config.latent_dim)).astype(np.float32)
  text_t, latent_t = rng.uniform(size=(2, batch)).astype(np.float32)
  return tokens, latents, text_t, latent_t, mask


def max_abs_differences(
  model_config: ml_collections.ConfigDict, state_dict: Mapping[str, np.ndarray], params: Any, seed: int = 0
) -> dict[str, float]:
  """{output: max |PyTorch - Flax|} on a seeded random batch, both in float32.

  The twin loads `state_dict` with strict=True (a ConversionError says why it would not); the
  Flax model runs `params` at the highest matmul precision. Lower-precision weights are upcast
  exactly, so the comparison checks the mapping, not the precision.
  """
  cfg = ml_collections.ConfigDict(model_config.to_dict())
  cfg.dtype = 'float32'
  torch_model = reference_model.ReferenceMultimodalMMDiT(cfg).eval()
  try:
    torch_model.load_state_dict(
      {k: files.to_tensor(np.asarray(v, np.float32)) for k, v in state_dict.items()}, strict=True
    )
  except RuntimeError as e:
    raise mapping.ConversionError(
      'the PyTorch model does not load the state dict with strict=True: ' + ' '.join(str(e).split())
    ) from e
  inputs = random_batch(cfg, seed)
  tokens, latents, text_t, latent_t, mask = inputs
  with torch.no_grad():
    expected = torch_model(
      torch.from_numpy(tokens).long(),
      torch.from_numpy(latents),
      torch.from_numpy(text_t),
      torch.from_numpy(latent_t),
      torch.from_numpy(mask),
    )
  params32 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
  with jax.default_matmul_precision('highest'):
    got = jax.jit(model_lib.MultimodalMMDiT(cfg).apply)({'params': params32}, *inputs)
  return {name: float(np.max(np.abs(np.asarray(g) - e.numpy()))) for name, g, e in zip(OUTPUT_NAMES, got, expected)}
