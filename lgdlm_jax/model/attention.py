"""The joint attention of the MMDiT behind one config key, `model.attention`.

    outs = joint_attention(qs, ks, vs, key_masks, options)    # per modality: q/k/v [B, N_m, 8, 64]
    config = resolve(config, platform)                        # 'auto' -> a concrete backend

Every backend computes softmax(q k^T / sqrt(64)) v over the tokens of all modalities together,
with padded text keys (key_masks[m] False) excluded and the latent token always visible:
- `xla`: the plain computation, exactly as the model has always run it; the reference every other
  backend is tested against. It holds the [B, 8, Q, K] scores, so memory grows with S^2.
- `blockwise`: pure JAX, memory O(S): an online softmax over key blocks with its own backward
  (lgdlm_jax.model.blockwise_attention). Any platform; the portable fallback.
- `cudnn`: cuDNN's fused flash attention (jax.nn.dot_product_attention(implementation='cudnn')),
  NVIDIA GPUs, bfloat16 only. Keys are reordered so that the valid ones come first and padding
  becomes a key length, which is what the kernel takes.
- `splash`: the Pallas TPU splash attention kernel. Padding becomes segment ids (valid keys 1,
  padding 0, every query 1), the joint sequence is padded to the kernel's block size, and the
  kernel runs under shard_map over the axes of the ambient mesh (jax.set_mesh), because jit does
  not partition a pallas_call.
- `auto` (the default) is replaced by `resolve` once the platform is known (after jax.distributed
  start-up, before the model is built): TPU -> splash; GPU -> cudnn in bfloat16, else blockwise;
  CPU -> xla below CPU_BLOCKWISE_FROM joint tokens (max_seq_len + 1), blockwise from there. xla
  was the faster of the two on CPU up to 2048 tokens (README, "Attention backends and ahead-of-time
  compiles"); from 4096 tokens its scores take GBs per layer, so blockwise.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from lgdlm_jax.errors import ConfigError
from lgdlm_jax.model import blockwise_attention

# The names are lgdlm_jax.config.schema.CHOICES['model.attention'] less 'auto'.
BACKENDS = ('xla', 'blockwise', 'cudnn', 'splash')
# python3 -m benchmarks.attention_cpu measures the two on CPU (forward + backward of one layer).
CPU_BLOCKWISE_FROM = 4096
RESIDUAL_NAME = blockwise_attention.RESIDUAL_NAME
# cuDNN pads its tiles to 64 tokens anyway; padding the sequence to that also makes it even.
CUDNN_BLOCK = 64
# The TPU's lane width: splash block sizes are multiples of it.
SPLASH_LANES = 128


class AttentionOptions(NamedTuple):
  backend: str
  dtype: Any
  blockwise_block_size: int = 512
  splash_block_size: int = 512


def options_from_config(model_config: ml_collections.ConfigDict, dtype: Any) -> AttentionOptions:
  """The model's attention settings; an unresolved 'auto' is resolved for jax.default_backend() (the
  model is traced after start-up, so that is the platform it runs on; `resolve` does it up front)."""
  backend = model_config.attention
  if backend == 'auto':
    backend = auto_backend(model_config, jax.default_backend())
  return AttentionOptions(backend, dtype, model_config.blockwise_block_size, model_config.splash_block_size)


def auto_backend(model_config: ml_collections.ConfigDict, platform: str) -> str:
  """The backend 'auto' stands for on `platform` ('cpu', 'gpu'/'cuda'/'rocm', 'tpu'); see the module doc."""
  if platform == 'tpu':
    return 'splash'
  if platform in ('gpu', 'cuda'):
    return 'cudnn' if model_config.dtype == 'bfloat16' else 'blockwise'
  if platform == 'cpu':
    return 'xla' if model_config.max_seq_len + 1 < CPU_BLOCKWISE_FROM else 'blockwise'
  return 'blockwise'


def resolve(config: ml_collections.FrozenConfigDict, platform: str) -> ml_collections.FrozenConfigDict:
  """The config with model.attention = a concrete backend for `platform`; checks that it can run there.

  Call it after jax.distributed start-up and before building the model (the training loop and
  the benchmark do); `platform` is jax.default_backend() or the target of an ahead-of-time compile.
  """
  choice = config.model.attention
  backend = auto_backend(config.model, platform) if choice == 'auto' else choice
  if backend == 'cudnn' and platform not in ('gpu', 'cuda'):
    raise ConfigError(f"model.attention='cudnn' runs on NVIDIA GPUs only, not on {platform!r}")
  if backend == 'splash' and platform != 'tpu':
    raise ConfigError(
      f"model.attention='splash' runs on TPUs only, not on {platform!r} "
      '(its CPU emulation is for tests: jax.experimental.pallas.tpu.force_tpu_interpret_mode)'
    )
  if backend == choice:
    return config
  updated = config.to_dict()
  updated['model']['attention'] = backend
  return ml_collections.FrozenConfigDict(updated)


def joint_attention(
  qs: tuple[jax.Array, ...],
  ks: tuple[jax.Array, ...],
  vs: tuple[jax.Array, ...],
  key_masks: tuple[jax.Array | None, ...],
  options: AttentionOptions,
  segment_ids: tuple[jax.Array, ...] | None = None,
) -> tuple[jax.Array, ...]:
  """Attention of every modality's queries over all modalities' keys; outputs [B, N_m, H, D] in options.dtype.

  key_masks[m]: [B, N_m] bool, False = a padding key, or None = all valid.
  segment_ids[m] (packed rows): [B, N_m] int32; query i attends key j iff their ids are equal, and
  key_masks are ignored (padding is segment 0, which attends only itself).
  """
  if options.backend == 'xla':
    return _xla(qs, ks, vs, key_masks, options, segment_ids)
  lengths = [q.shape[1] for q in qs]
  q, k, v = (jnp.concatenate(xs, axis=1) for xs in (qs, ks, vs))
  if segment_ids is None:
    # Unpacked rows as segments: valid keys 1, padding 0; the queries need no ids (they see every valid key).
    q_ids_BxQ = None
    kv_ids_BxK = jnp.concatenate(
      [jnp.ones(k.shape[:2], jnp.int32) if m is None else m.astype(jnp.int32) for k, m in zip(ks, key_masks)], axis=1
    )
  else:
    q_ids_BxQ = kv_ids_BxK = jnp.concatenate([ids.astype(jnp.int32) for ids in segment_ids], axis=1)
  if options.backend == 'blockwise':
    out = blockwise_attention.attention(q, k, v, kv_ids_BxK, q_ids_BxQ, block_size=options.blockwise_block_size)
  elif options.backend == 'cudnn':
    if segment_ids is not None:
      raise ValueError("model.attention='cudnn' cannot run packed rows (data.packing); use 'blockwise'")
    out = _cudnn(q, k, v, kv_ids_BxK.astype(bool))
  elif options.backend == 'splash':
    out = _splash(q, k, v, kv_ids_BxK, q_ids_BxQ, options.splash_block_size)
  else:
    raise ValueError(f'unknown attention backend {options.backend!r}; expected one of {", ".join(BACKENDS)}')
  splits = [sum(lengths[: i + 1]) for i in range(len(lengths) - 1)]
  return tuple(jnp.split(out.astype(options.dtype), splits, axis=1))


def _xla(qs, ks, vs, key_masks, options, segment_ids):
  """Per (query modality, key modality) block, never concatenating the modalities' tokens.

  scores[m][j] = q_m k_j^T, one max and one normaliser over all j, then out_m = sum_j weights[m][j] v_j:
  the same attention as over the concatenated sequence (up to float rounding), without the copies
  into and out of a joint tensor, which are a large share of the layer's time on CPU (README, "What
  moved the CPU figure"). Masked keys get the most negative finite value, as x_transformers does;
  with segment_ids, every key of another segment is masked so.
  """
  head_dim = qs[0].shape[-1]
  einsum = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
  outputs = []
  for i, q_BxQxKxD in enumerate(qs):
    scores = []
    for j, (k_BxNxKxD, mask_BxN) in enumerate(zip(ks, key_masks)):
      s_BxKxQxN = einsum('bqhd,bkhd->bhqk', q_BxQxKxD, k_BxNxKxD) * (head_dim**-0.5)
      if segment_ids is not None:
        mask_Bx1xQxN = segment_ids[i][:, None, :, None] == segment_ids[j][:, None, None, :]
        s_BxKxQxN = jnp.where(mask_Bx1xQxN, s_BxKxQxN, jnp.finfo(jnp.float32).min)
      elif mask_BxN is not None:
        s_BxKxQxN = jnp.where(mask_BxN[:, None, None, :], s_BxKxQxN, jnp.finfo(jnp.float32).min)
      scores.append(s_BxKxQxN)
    # As jax.nn.softmax: the max is a constant for differentiation.
    max_BxKxQx1 = jax.lax.stop_gradient(
      functools.reduce(jnp.maximum, [jnp.max(s, axis=-1, keepdims=True) for s in scores])
    )
    exps = [jnp.exp(s - max_BxKxQx1) for s in scores]
    total_BxKxQx1 = sum(jnp.sum(e, axis=-1, keepdims=True) for e in exps)
    # Each block's weighted values are accumulated in float32 and rounded to the compute dtype
    # once, as a single matmul over the concatenated keys would.
    outputs.append(
      sum(einsum('bhqk,bkhd->bqhd', (e / total_BxKxQx1).astype(options.dtype), v) for e, v in zip(exps, vs)).astype(
        options.dtype
      )
    )
  return tuple(outputs)


def _cudnn(q, k, v, valid_BxK):
  """cuDNN flash attention: the sequence padded to a multiple of CUDNN_BLOCK (cuDNN's training
  kernels take even lengths only), and the valid keys moved to the front so padding becomes a length."""
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"model.attention='cudnn' takes bfloat16 or float16 only; got {q.dtype}")
  length = q.shape[1]
  pad = -length % CUDNN_BLOCK
  q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
  valid_BxK = jnp.pad(valid_BxK, ((0, 0), (0, pad)))
  order_BxK = jnp.argsort(~valid_BxK, axis=1, stable=True)
  k, v = (jnp.take_along_axis(x, order_BxK[:, :, None, None], axis=1) for x in (k, v))
  lengths_B = jnp.sum(valid_BxK, axis=1, dtype=jnp.int32)
  out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths_B, implementation='cudnn')
  return out[:, :length]


def splash_block_size(length: int, block_size: int) -> tuple[int, int]:
  """(padded length, block): the length rounded up to SPLASH_LANES, and the largest multiple of
  SPLASH_LANES <= block_size that divides it (4097 -> 4224 in blocks of 384 for block_size 512)."""
  padded = -(-length // SPLASH_LANES) * SPLASH_LANES
  block = max(SPLASH_LANES, block_size // SPLASH_LANES * SPLASH_LANES)
  while padded % block:
    block -= SPLASH_LANES
  return padded, block


def _splash(q, k, v, kv_ids_BxK, q_ids_BxQ, block_size):
  # Imported here: the Pallas TPU modules are only needed (and only importable everywhere) on demand.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

  batch, length, heads, head_dim = q.shape
  padded, block = splash_block_size(length, block_size)
  pad = ((0, 0), (0, padded - length), (0, 0), (0, 0))
  # [B, H, L, D] as the kernel takes it; the kernel does not scale the scores itself.
  q, k, v = (jnp.swapaxes(jnp.pad(x, pad), 1, 2) for x in ((q * head_dim**-0.5).astype(q.dtype), k, v))
  # The tail that pads to the block size is segment 0: no key of a real query's segment.
  kv_segments_BxL = jnp.pad(kv_ids_BxK, ((0, 0), (0, padded - length)))
  if q_ids_BxQ is None:
    q_segments_BxL = jnp.ones((batch, padded), jnp.int32)
  else:
    q_segments_BxL = jnp.pad(q_ids_BxQ, ((0, 0), (0, padded - length)))
  sizes = kernels.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )

  def per_shard(q, k, v, q_segments, kv_segments):
    mask = masks.MultiHeadMask([masks.FullMask((padded, padded))] * heads)
    kernel = kernels.make_splash_mha(
      mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, residual_checkpoint_name=RESIDUAL_NAME
    )
    # A loop over this device's rows rather than jax.vmap: jax 0.10.2's TPU interpret mode (the
    # kernel's CPU emulation the tests use) mishandles the grid axis that vmap adds.
    return jax.lax.map(
      lambda row: kernel(*row[:3], segment_ids=kernels.SegmentIds(*row[3:])), (q, k, v, q_segments, kv_segments)
    )

  mesh = jax.sharding.get_abstract_mesh()
  axes = _batch_axes(mesh, batch)
  if axes:
    spec = jax.sharding.PartitionSpec(axes)
    per_shard = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec,) * 5, out_specs=spec, check_vma=False)
  out_BxHxLxD = per_shard(q, k, v, q_segments_BxL, kv_segments_BxL)
  return jnp.swapaxes(out_BxHxLxD, 1, 2)[:, :length]


def _batch_axes(mesh: jax.sharding.AbstractMesh, batch: int) -> tuple[str, ...]:
  """The ambient mesh's axes the batch is split over: all of them, as far as their sizes divide it
  (an axis that does not divide what is left replicates the kernel's work instead); () without one."""
  axes: list[str] = []
  shards = 1
  for name, size in ({} if mesh.empty else mesh.shape).items():
    if batch % (shards * size) == 0:
      axes.append(name)
      shards *= size
  return tuple(axes)
