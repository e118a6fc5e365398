"""Random parameters of a model's shapes, without running the model; Flax parameters against a PyTorch twin's."""

import flax
import numpy as np

from lgdlm_jax.convert import mapping


def random_params(model_config, seed: int):
  """Random numpy params of the model's shapes (no model run)."""
  rng = np.random.default_rng(seed)
  shapes = mapping.param_shapes(model_config)
  flat = {path: rng.standard_normal(shape).astype(np.float32) for path, shape in shapes.items()}
  return flax.traverse_util.unflatten_dict(flat)


def relative_errors(params, torch_model, model_config) -> dict[str, float]:
  """{Flax path: max |ours - torch| / max |torch|} per parameter array, the twin's state dict mapped to Flax."""
  expected = mapping.torch_to_flax({k: v.detach().numpy() for k, v in torch_model.state_dict().items()}, model_config)
  got = flax.traverse_util.flatten_dict(params)
  return {
    '/'.join(path): float(np.abs(np.asarray(got[path]) - e).max() / np.abs(e).max())
    for path, e in flax.traverse_util.flatten_dict(expected).items()
  }
