"""lgdlm_jax: JAX/Flax reimplementation of the LGDLM cycle-VAE MMDiT training system."""
