"""lgdlm_jax.bench: its FLOP count against XLA's own, and one benchmark run on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgdlm_jax import bench
from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.model import flops as model_flops
from lgdlm_jax.objective import cycle_vae
from lgdlm_jax.objective import draws as draws_lib
from lgdlm_jax.objective import options as options_lib


def small_config():
  config = config_lib.default_config()
  # R = 1: the hyper-connection mixing adds elementwise FLOPs that the matmul count leaves out.
  config.model.update(
    hidden_size=128, n_blocks=2, cond_dim=64, max_seq_len=64, vocab_size=2048, num_residual_streams=1, scan_unroll=2
  )
  config.training.update(train_batch_size=2, eval_batch_size=2)
  return config


@pytest.mark.parametrize('num_heads, head_dim', [(8, 64), (4, 32)])
def test_forward_flops_match_xlas_count(num_heads, head_dim):
  config = small_config()
  config.model.update(num_heads=num_heads, head_dim=head_dim)
  model = model_lib.MultimodalMMDiT(config.model)
  batch, seq_len = 2, config.model.max_seq_len
  tokens, latents = jnp.zeros((batch, seq_len), jnp.int32), jnp.zeros((batch, config.model.latent_dim))
  params = model.init(jax.random.key(0), tokens, latents)['params']
  apply = jax.jit(lambda p, t, lat: model.apply({'params': p}, t, lat))
  xla_flops = apply.lower(params, tokens, latents).compile().cost_analysis()['flops']
  ours = batch * model_flops.forward_flops_per_sequence(config.model, text_logits=True)
  # Ours counts matmuls only; XLA also counts the norms, softmax and activations (a few %).
  assert 0.9 * xla_flops <= ours <= xla_flops, (ours, xla_flops)


@pytest.mark.parametrize('cycle_latent_weight', [0.0, 1.0])
def test_train_flops_match_xlas_count_of_the_loss_gradient(cycle_latent_weight):
  config = small_config()
  config.loss.cycle_latent_weight = cycle_latent_weight
  model = model_lib.MultimodalMMDiT(config.model)
  batch = {k: jnp.asarray(v) for k, v in bench.synthetic_batch(config).items()}
  params = model.init(jax.random.key(0), batch['input_ids'], batch['latent'])['params']
  options = options_lib.from_config(config)
  draws = draws_lib.sample_draws(jax.random.key(1), 2, config.model.latent_dim, options)
  grad = jax.jit(jax.grad(lambda p: cycle_vae.cycle_vae_loss(p, batch, draws, step=0, model=model, options=options)[0]))
  xla_flops = grad.lower(params).compile().cost_analysis()['flops']
  ours = bench.train_flops_per_step(config)
  # Backward = 2x forward for matmuls (less the embedding's unneeded input gradient); XLA adds
  # the elementwise work of forward and backward.
  assert 0.85 * xla_flops <= ours <= xla_flops, (ours, xla_flops)


def test_train_flops_count_two_l2t_passes_and_one_or_two_t2l_passes():
  config = small_config()
  l2t = model_flops.forward_flops_per_sequence(config.model, text_logits=True)
  t2l = model_flops.forward_flops_per_sequence(config.model, text_logits=False)
  config.loss.cycle_latent_weight = 1.0
  assert bench.train_flops_per_step(config) == 3 * 2 * (2 * l2t + 2 * t2l)
  config.loss.cycle_latent_weight = 0.0
  assert bench.train_flops_per_step(config) == 3 * 2 * (2 * l2t + t2l)
  # The loss never reads the cluster head, so it is not counted.
  config.model.cluster_size = 5
  assert bench.train_flops_per_step(config) == 3 * 2 * (2 * l2t + t2l)


def test_benchmark_reports_every_field_and_each_step():
  config = small_config()
  result = bench.benchmark(config, steps=3, warmup=1, sync_each_step=True)
  assert len(result['step_seconds']) == 3 and min(result['step_seconds']) > 0
  assert result['steps_per_s'] > 0 and np.isfinite(result['final_loss'])
  assert result['tokens_per_s'] == pytest.approx(result['steps_per_s'] * 2 * config.model.max_seq_len)
  assert result['model_flops_per_step'] == bench.train_flops_per_step(config)
  assert result['model']['scan_unroll'] == 2 and result['backend'] == jax.default_backend()
  assert result['compile_s'] > 0
  # MFU only where the device's peak is known (never for a CPU).
  assert (result['mfu'] is None) == (bench.peak_flops(jax.devices()[0]) is None)


def test_compile_only_needs_no_parameters_and_reports_memory():
  config = small_config()
  result = bench.compile_only(config)
  assert result['compile_s'] >= result['trace_and_lower_s'] > 0
  # The donated arguments hold the parameters and two AdamW moments, float32.
  model = model_lib.MultimodalMMDiT(config.model)
  shapes = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, config.model.latent_dim))
  )
  param_bytes = sum(x.size * 4 for x in jax.tree_util.tree_leaves(shapes))
  assert result['argument_bytes'] >= 3 * param_bytes
  assert result['temp_bytes'] > 0 and result['model_flops_per_step'] == bench.train_flops_per_step(config)


def test_synthetic_packed_batch_has_the_packed_layout():
  config = small_config()
  config.model.max_seq_len = 10
  config.data.update(packing=True, max_segments_per_row=3)
  batch = bench.synthetic_batch(config)
  np.testing.assert_array_equal(batch['segment_ids'][1], [1, 1, 1, 2, 2, 2, 3, 3, 3, 3])
  np.testing.assert_array_equal(batch['positions'][1], [0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
  np.testing.assert_array_equal(batch['segment_lengths'], [[3, 3, 4]] * 2)
  assert batch['latent'].shape == (2, 3, config.model.latent_dim) and batch['latent_mask'].all()
  assert batch['attention_mask'].all() and batch['input_ids'].shape == (2, 10)
