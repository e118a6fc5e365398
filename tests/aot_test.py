"""Ahead-of-time compiles for a TPU slice and an NVIDIA H100 on a machine that has neither.

These need libtpu or the CUDA plugin, which change how every JAX process starts a backend, so they
live outside the main environment: each test is skipped where its package is absent, and .ci/run
runs this file again in two side environments (the tpu and cuda extras) with
JAX_PLATFORMS=cpu and TPU_SKIP_MDS_QUERY=1.
"""

import importlib.util
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgdlm_jax import bench
from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.errors import InputError
from lgdlm_jax.model import attention
from lgdlm_jax.training import aot
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step as train
from lgdlm_jax.training import step_estimate

needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec('libtpu') is None, reason="needs libtpu (pip install -e '.[tpu]' in a side environment)"
)
needs_cuda_plugin = pytest.mark.skipif(
  importlib.util.find_spec('jax_plugins') is None or importlib.util.find_spec('jax_plugins.xla_cuda12') is None,
  reason="needs the CUDA plugin (pip install -e '.[cuda]' in a side environment)",
)


def small_config(devices: int, **model):
  config = config_lib.default_config()
  config.model.update(
    hidden_size=128,
    n_blocks=2,
    cond_dim=64,
    max_seq_len=1024,
    vocab_size=1024,
    dtype='bfloat16',
    remat_policy='dots',
    **model,
  )
  config.training.update(train_batch_size=devices, eval_batch_size=devices)
  config.mesh.update(fsdp=devices, min_shard_size=1024)
  return config


def state_bytes_per_device(config, devices: int) -> int:
  """Parameters and AdamW moments per device under the FSDP sharding, from shapes alone."""
  config = config_lib.finalize(config)
  model = model_lib.MultimodalMMDiT(config.model)
  abstract = jax.eval_shape(
    lambda k: train.init_state(config, model, optimizer_lib.make_optimizer(config), k), jax.random.key(0)
  )
  return sum(
    sharding.per_device_bytes(t, devices, config.mesh.min_shard_size) for t in (abstract.params, abstract.opt_state)
  )


def test_an_unknown_topology_is_named():
  with pytest.raises(InputError, match="'v9x:banana'"):
    aot.target_devices('v9x:banana')


@needs_libtpu
def test_tpu_compile_reports_per_chip_memory_and_splash_needs_less_than_xla():
  config = small_config(4)
  report = bench.compile_only(config, 'v5e:2x2')
  assert (report['devices'], report['device'], report['backend']) == (4, 'TPU v5 lite', 'tpu')
  assert report['model']['attention'] == 'splash' and report['chip_memory_gib'] == 16
  # The donated state is the arguments' bulk: this chip's quarter of the parameters and AdamW moments.
  state = state_bytes_per_device(config, 4)
  assert state <= report['argument_bytes'] <= state + 2**20
  assert report['alias_bytes'] >= state and report['temp_bytes'] > 0
  assert report['peak_bytes'] == (
    report['argument_bytes'] + report['output_bytes'] - report['alias_bytes'] + report['temp_bytes']
  )
  assert report['fits'] is True and report['compile_s'] > 0
  # The compiler's estimate counts the loops of the step (the scan over the blocks, the pass-by-pass
  # gradient) per iteration; the synthetic batch has no padding.
  estimate = report['estimate']
  assert estimate['uncounted_loops'] == [] and estimate['loops'] >= 2 and estimate['loop_scale'] > 1
  # The splash kernels carry no cycle estimate: their FLOPs are added at the chip's peak.
  assert any(k.startswith('splash_mha_fwd') for k in estimate['uncosted_kernels']) and estimate['attention_s'] > 0
  assert estimate['step_s'] == estimate['compiler_s'] + estimate['attention_s'] > 0
  assert estimate['real_tokens_per_s'] == estimate['tokens_per_s'] and 0 < estimate['mfu'] < 1
  # The plain attention holds [8, S+1, S+1] float32 scores per row: at S = 1024 that shows where
  # attention sets the peak, as when one backward pass runs through all passes ('joint'). Taken
  # pass by pass (the default), this tiny model's peak lies elsewhere (41.3 MB splash, 42.7 MB xla).
  config.training.round_gradients = 'joint'
  fused = bench.compile_only(config, 'v5e:2x2')
  config.model.attention = 'xla'
  plain = bench.compile_only(config, 'v5e:2x2')
  assert plain['temp_bytes'] > fused['temp_bytes'] + 8 * 1025 * 1025 * 4, (plain['temp_bytes'], fused['temp_bytes'])


def _toy_scan(outer: int, inner: int):
  """The estimate of a TPU compile of `outer` iterations of a scan over `inner` matmuls (a scan in a scan)."""
  devices, _ = aot.target_devices('v5e:2x2')
  mesh = jax.sharding.Mesh(np.asarray(devices[:1]).reshape(1), ('x',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def matmuls(x, ws):
    return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)[0]

  def f(x, ws):
    return jax.lax.scan(lambda c, _: (matmuls(c, ws), None), x, None, length=outer)[0]

  x = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16, sharding=replicated)
  ws = jax.ShapeDtypeStruct((inner, 512, 512), jnp.bfloat16, sharding=replicated)
  return step_estimate.estimate_step(jax.jit(f).lower(x, ws).compile(), devices[0])


@needs_libtpu
def test_tpu_step_estimate_counts_every_iteration_of_a_scan():
  small, large = _toy_scan(2, 3), _toy_scan(4, 12)
  # libtpu's own figure counts each loop body once, whatever the trip counts ...
  assert large.optimal_seconds == pytest.approx(small.optimal_seconds, rel=0.1)
  assert large.cycles_loops_once == pytest.approx(small.cycles_loops_once, rel=0.1)
  # ... the estimate counts every iteration: 8 times the matmuls, 8 times the time.
  assert sorted(small.loops.values()) == [2, 3] and sorted(large.loops.values()) == [4, 12]
  assert small.uncounted_loops == large.uncounted_loops == [] and small.uncosted_kernels == {}
  assert large.seconds == pytest.approx(8 * small.seconds, rel=0.05), (small, large)
  # 6 matmuls of 2 x 256 x 512 x 512 FLOPs, at most at the v5e's peak.
  assert small.seconds >= 6 * 2 * 256 * 512 * 512 / 197e12


@needs_cuda_plugin
def test_h100_compile_of_cudnn_attention_holds_the_cudnn_fused_attention_call():
  devices, platform = aot.target_devices('h100')
  assert platform == 'gpu' and devices[0].device_kind.startswith('NVIDIA H100')
  mesh = jax.sharding.Mesh(np.asarray(devices).reshape(1, 1), sharding.MESH_AXES)
  options = attention.AttentionOptions('cudnn', jnp.bfloat16)

  def loss(qs, ks, vs, mask):
    outs = attention.joint_attention(qs, ks, vs, (mask, None), options)
    return sum(jnp.sum(o.astype(jnp.float32)) for o in outs)

  qkv = lambda n: jax.ShapeDtypeStruct((2, n, 8, 64), jnp.bfloat16)
  args = ((qkv(1023), qkv(1)),) * 3 + (jax.ShapeDtypeStruct((2, 1023), bool),)
  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), in_shardings=sharding.replicated(mesh)).lower(*args)
  calls = set(re.findall(r'__cudnn\$fmha\w*', lowered.as_text()))
  assert {'__cudnn$fmhaSoftmax', '__cudnn$fmhaSoftmaxBackward'} <= calls, calls
  assert lowered.compile().memory_analysis().temp_size_in_bytes > 0


@needs_cuda_plugin
def test_h100_node_compile_reports_per_gpu_memory():
  report = bench.compile_only(small_config(8), 'h100:8')
  assert (report['devices'], report['backend'], report['model']['attention']) == (8, 'gpu', 'cudnn')
  assert report['chip_memory_gib'] == 79.11 and report['fits'] is True
  assert state_bytes_per_device(small_config(8), 8) <= report['argument_bytes']
