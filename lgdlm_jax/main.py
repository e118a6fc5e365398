"""Entry point: python -m lgdlm_jax.main --config configs/smoke.py [--config.a.b=value ...].

Builds the model from the config, initialises its parameters and runs one forward pass on a
synthetic batch (the training loop replaces this smoke run).
"""

from absl import app
from absl import flags
from absl import logging
import chex
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from lgdlm_jax import model as model_lib

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/smoke.py', 'Path to a get_config() Python file.')


def smoke_forward(config) -> dict[str, tuple[int, ...]]:
  """Initialises the model and runs one forward pass; returns the output shapes."""
  model = model_lib.MultimodalMMDiT(config.model)
  batch = config.training.train_batch_size
  rng = jax.random.key(config.training.seed)
  tokens = jax.random.randint(rng, (batch, config.model.max_seq_len), 0, config.model.vocab_size)
  latents = jax.random.normal(rng, (batch, config.model.latent_dim))
  t = jnp.full((batch,), 0.5)
  params = jax.jit(model.init)(rng, tokens, latents, t, t)['params']
  outputs = jax.jit(model.apply)({'params': params}, tokens, latents, t, t)
  chex.assert_tree_all_finite(outputs)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  logging.info('parameters: %d', n_params)
  return {name: tuple(o.shape) for name, o in zip(('text_logits', 'latent_pred', 'cluster_logits'), outputs)}


def main(argv) -> None:
  del argv
  print(smoke_forward(_CONFIG.value))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
