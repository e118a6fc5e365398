"""Random parameters of a model's shapes, without running the model."""

import flax
import numpy as np

from lgdlm_jax.convert import mapping


def random_params(model_config, seed: int):
  """Random numpy params of the model's shapes (no model run)."""
  rng = np.random.default_rng(seed)
  shapes = mapping.param_shapes(model_config)
  flat = {path: rng.standard_normal(shape).astype(np.float32) for path, shape in shapes.items()}
  return flax.traverse_util.unflatten_dict(flat)
