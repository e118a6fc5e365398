"""One-GPU benchmark: lgdlm_jax's train step against the PyTorch reference's, with a time breakdown.

benchmarks/gpu.sh runs it (the cluster config, bfloat16, cuDNN attention, on one GPU); by hand:

    python3 -m benchmarks.gpu_bench --side=jax --config=configs/cluster.py --config.mesh.fsdp=1 \
        --config.training.train_batch_size=4 --config.model.attention=cudnn > jax.jsonl
    python3 -m benchmarks.gpu_bench --side=torch --torch_precision=bfloat16 --config=... > torch.jsonl
    python3 -m benchmarks.gpu_bench --side=compare --results=jax.jsonl,torch.jsonl

Each side runs in a process of its own and prints JSON lines as it goes, so that a side stopped by
a time limit still leaves what it measured: first the train step ('step': compile seconds (PyTorch:
the first step's, as it compiles nothing), tokens/s, MFU, peak memory), then one record per part
of the breakdown. --side=compare prints both sides and their ratio as a table and one JSON line.
Step time: JAX, the mean over the timed steps dispatched back to back as in training; PyTorch,
the median of the steps' own times (each ends reading the loss, as the reference's trainer does).
MFU counts the same model FLOPs on both sides (lgdlm_jax.bench.train_flops_per_step).

The breakdown is measured the same way on both sides, each part at the step's own shapes:
- attention: the attention core (softmax(q k^T / 8) v over the S + 1 tokens, 8 heads of 64),
  forward and backward timed alone on the rows of all the step's model passes at once, times the
  blocks, plus one forward per block where remat recomputes it. JAX: jax.nn.dot_product_attention
  with the implementation model.attention names; PyTorch: the model's own x_transformers Attend
  module, with the key mask mmdit gives it.
- matmuls: the step's dense-matmul FLOPs (model FLOPs less the attention core's) at the rate that
  one of its feed-forward matmuls, [rows x (S+1), H] x [H, 4H] forward and backward, runs at alone.
- hyper_connections: the step with R residual streams less the same step with one (a plain residual).
- optimizer: JAX: the optax update (clipping and AdamW) timed alone on the parameters' shapes;
  PyTorch: clip_grad_norm_ and AdamW.step() inside a step synchronised between its phases.
- other: the step less those four (embeddings, norms, losses, elementwise work; it comes out
  negative where the estimates overlap).
"""

from collections.abc import Callable, Sequence
import functools
import gc
import json
import statistics
import time
import types
from typing import Any

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import optax
import torch

from lgdlm_jax import bench
from lgdlm_jax import cli
from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.model import flops as model_flops
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.objective import plan as plan_lib
from lgdlm_jax.reference import trainer as reference_trainer
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import step as train

SIDES = ('jax', 'torch', 'compare')
PARTS = ('attention', 'matmuls', 'hyper_connections', 'optimizer')
GIB = 2**30
MFU_TARGET = 0.45  # of the chip's dense bfloat16 peak (lgdlm_jax.bench.PEAK_FLOPS)
RATIO_TARGET = 2.0  # lgdlm_jax's tokens/s over the reference's


def emit(record: dict[str, Any]) -> None:
  print(json.dumps(record), flush=True)


def with_overrides(config: ml_collections.ConfigDict, **model_overrides) -> config_lib.Config:
  changed = ml_collections.ConfigDict(config.to_dict())
  changed.model.update(model_overrides)
  return config_lib.finalize(changed)


def passes_per_step(config: ml_collections.ConfigDict) -> int:
  """Model passes (each over the whole batch) in one train step: the objective's pass plan."""
  return len(plan_lib.in_order(plan_lib.pass_plan(options_lib.from_config(config))))


def dense_flops_per_step(config: ml_collections.ConfigDict) -> float:
  """Model FLOPs of the step that are not the attention core's (projections, feed-forwards, heads)."""
  attention = (
    3
    * config.training.train_batch_size
    * passes_per_step(config)
    * model_flops.attention_flops_per_sequence(config.model)
  )
  return bench.train_flops_per_step(config) - attention


def median_seconds(run: Callable[[], Any], wait: Callable[[Any], Any], iters: int) -> float:
  """Median seconds of run() (waited for with wait) over iters calls, after one untimed call."""
  wait(run())
  times = []
  for _ in range(iters):
    started = time.perf_counter()
    wait(run())
    times.append(time.perf_counter() - started)
  return statistics.median(times)


def emit_parts(side: str, parts: dict[str, Callable[[], dict]]) -> None:
  """Emits each part's record in turn. A part that fails gives a record with its error instead (the
  comparison prints it), and the parts after it still run."""
  for name, measure in parts.items():
    try:
      record = measure()
    except Exception as e:  # noqa: BLE001 -- reported in the record and by --side=compare, never dropped
      record = {'record': name, 'error': f'{type(e).__name__}: {e}'.splitlines()[0][:500]}
    emit({'side': side, **record})


def attention_record(config, forward_s: float, forward_backward_s: float, remat: bool, **extra) -> dict:
  blocks = config.model.n_blocks
  per_step = blocks * (forward_backward_s + (forward_s if remat else 0.0))
  return {
    'record': 'attention',
    'forward_s': forward_s,
    'forward_backward_s': forward_backward_s,
    'calls_per_step': blocks,
    'recomputed_forward': remat,
    'per_step_s': per_step,
    **extra,
  }


def matmul_record(config, seconds: float, m: int, remat_full: bool) -> dict:
  h = config.model.hidden_size
  rate = 3 * 2 * m * h * 4 * h / seconds  # forward, and the backward's two matmuls
  dense = dense_flops_per_step(config) * (4 / 3 if remat_full else 1)  # full remat recomputes each forward
  return {
    'record': 'matmuls',
    'gemm_shape': [m, h, 4 * h],
    'gemm_flop_per_s': rate,
    'dense_flops_per_step': dense,
    'per_step_s': dense / rate,
  }


# ---------------------------------------------------------------------------------------------
# lgdlm_jax.


def model_attention(config: ml_collections.ConfigDict) -> str:
  """model.attention, the model's attention backend (xla | blockwise | cudnn | splash | auto).

  A config without the key predates the backends: its model's one attention was XLA's.
  """
  return config.model.attention if 'attention' in config.model else 'xla'


def jax_attention_implementation(config: ml_collections.ConfigDict) -> str:
  """The jax.nn.dot_product_attention implementation timed for the model's backend: cuDNN's for
  'cudnn'; XLA's for the rest (blockwise and splash have no jax.nn counterpart; the record says so)."""
  return 'cudnn' if model_attention(config) == 'cudnn' else 'xla'


def jax_wait(tree: Any) -> None:
  jax.block_until_ready(tree)


def jax_attention(config, rows: int, iters: int) -> dict:
  implementation = jax_attention_implementation(config)
  n, dtype = config.model.max_seq_len + 1, jnp.dtype(config.model.dtype)
  q, k, v = (
    jax.random.normal(key, (rows, n, config.model.num_heads, config.model.head_dim), dtype)
    for key in jax.random.split(jax.random.key(0), 3)
  )
  attend = functools.partial(jax.nn.dot_product_attention, implementation=implementation)
  forward = jax.jit(attend)
  gradients = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)))
  return attention_record(
    config,
    median_seconds(lambda: forward(q, k, v), jax_wait, iters),
    median_seconds(lambda: gradients(q, k, v), jax_wait, iters),
    # 'dots' keeps a fused kernel's output (saved by name), so only 'full'
    # runs the kernel's forward again in the backward pass.
    remat=config.model.remat_policy == 'full' or (config.model.remat_policy == 'dots' and implementation == 'xla'),
    rows=rows,
    timed=f'jax.nn.dot_product_attention(implementation={implementation!r})',
    model_attention=model_attention(config),
  )


def jax_matmuls(config, rows: int, iters: int) -> dict:
  m, h, dtype = rows * (config.model.max_seq_len + 1), config.model.hidden_size, jnp.dtype(config.model.dtype)
  kx, kw, ky = jax.random.split(jax.random.key(1), 3)
  x, w, dy = (
    jax.random.normal(kx, (m, h), dtype),
    jax.random.normal(kw, (h, 4 * h), dtype),
    jax.random.normal(ky, (m, 4 * h), dtype),
  )
  gemms = jax.jit(lambda x, w, dy: (x @ w, dy @ w.T, x.T @ dy))
  return matmul_record(
    config, median_seconds(lambda: gemms(x, w, dy), jax_wait, iters), m, remat_full=config.model.remat_policy == 'full'
  )


def jax_optimizer(config, iters: int) -> dict:
  model = model_lib.MultimodalMMDiT(config.model)
  optimizer = optimizer_lib.make_optimizer(config)
  abstract = jax.eval_shape(functools.partial(train.init_state, config, model, optimizer), jax.random.key(0))
  params = jax.tree.map(lambda a: jnp.full(a.shape, 0.01, a.dtype), abstract.params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  state = [params, optimizer.init(params)]

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def update(params, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def run():
    state[:] = update(*state, grads)
    return state

  seconds = median_seconds(run, jax_wait, iters)
  return {
    'record': 'optimizer',
    'per_step_s': seconds,
    'timed': 'optax update + apply_updates',
    'parameters': sum(a.size for a in jax.tree.leaves(abstract.params)),
  }


def jax_side(config, steps: int, warmup: int, iters: int, hc_ablation: bool) -> None:
  config = config_lib.finalize(config)
  config_lib.check_devices(config, jax.device_count(), jax.process_count())
  step = bench.benchmark(config, steps, warmup)
  step_s = 1.0 / step['steps_per_s']
  emit({'side': 'jax', 'record': 'step', 'step_s': step_s, **step, 'model_attention': model_attention(config)})
  rows = config.training.train_batch_size * passes_per_step(config)

  def hyper_connections() -> dict:
    one_stream_s = 1.0 / bench.benchmark(with_overrides(config, num_residual_streams=1), steps, warmup)['steps_per_s']
    return {'record': 'hyper_connections', 'step_s_one_stream': one_stream_s, 'per_step_s': step_s - one_stream_s}

  parts = {
    'attention': lambda: jax_attention(config, rows, iters),
    'matmuls': lambda: jax_matmuls(config, rows, iters),
    'optimizer': lambda: jax_optimizer(config, iters),
  }
  if hc_ablation and config.model.num_residual_streams > 1:
    parts['hyper_connections'] = hyper_connections
  emit_parts('jax', parts)


# ---------------------------------------------------------------------------------------------
# The PyTorch reference.


def torch_dtype(trainer: reference_trainer.TorchTrainer) -> torch.dtype:
  """The dtype the model's matmuls and attention run in."""
  return torch.bfloat16 if trainer.precision == 'autocast' else trainer.dtype


def torch_fitted_trainer(config, precision: str) -> tuple[reference_trainer.TorchTrainer, float, Any, list[int]]:
  """(trainer whose first step ran, that step's seconds, its config, the batches that did not fit):
  on a GPU the batch is halved while the step runs out of memory."""
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  halved_from = []
  while True:
    trainer = None
    try:
      trainer = reference_trainer.TorchTrainer(config, bench.synthetic_batch(config), device, precision)
      started = time.perf_counter()
      trainer.train_step()
      return trainer, time.perf_counter() - started, config, halved_from
    except torch.cuda.OutOfMemoryError:
      if config.training.train_batch_size == 1:
        raise
    # Out of the except block the tensors its traceback held are gone: give their memory back.
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    halved_from.append(config.training.train_batch_size)
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.training.train_batch_size //= 2
    config = config_lib.finalize(changed)


def torch_step(config, precision: str, steps: int, warmup: int) -> tuple[dict, reference_trainer.TorchTrainer, Any]:
  """The train step's record, the trainer and the config it ran (its batch may have been halved)."""
  on_gpu = torch.cuda.is_available()
  if on_gpu:
    torch.cuda.reset_peak_memory_stats()
  trainer, first_step_s, config, halved_from = torch_fitted_trainer(config, precision)
  for _ in range(warmup - 1):
    trainer.train_step()
  trainer.timed(steps)
  step_s = statistics.median(trainer.step_seconds)
  device_kind = torch.cuda.get_device_name() if on_gpu else 'cpu'
  peak = bench.peak_flops(types.SimpleNamespace(device_kind=device_kind))  # it reads only device_kind
  flops = bench.train_flops_per_step(config)
  batch = config.training.train_batch_size
  record = {
    'side': 'torch',
    'record': 'step',
    'precision': precision,
    'device': device_kind,
    'torch': torch.__version__,
    'batch': batch,
    'out_of_memory_at_batch': halved_from,
    'step_s': step_s,
    'steps_per_s': 1.0 / step_s,
    'tokens_per_s': batch * config.model.max_seq_len / step_s,
    'model_flops_per_step': flops,
    'mfu': None if peak is None else flops / step_s / peak,
    'compile_s': None,
    'first_step_s': first_step_s,
    'final_loss': trainer.loss,
    'peak_memory_bytes': torch.cuda.max_memory_allocated() if on_gpu else None,
  }
  return record, trainer, config


def torch_attention(trainer: reference_trainer.TorchTrainer, config, rows: int, iters: int) -> dict:
  attend = trainer.model.mmdit.blocks[0].joint_attn.attend
  n = config.model.max_seq_len + 1
  shape = (rows, config.model.num_heads, n, config.model.head_dim)
  options = dict(device=trainer.device, dtype=torch_dtype(trainer))
  q, k, v = (torch.randn(*shape, **options).requires_grad_() for _ in range(3))
  d_out = torch.randn(*shape, **options)
  mask = torch.ones(rows, n, dtype=torch.bool, device=trainer.device)

  def attention(backward: bool) -> None:
    with trainer.autocast():  # as the model runs it (under autocast, softmax runs in float32)
      out = attend(q, k, v, mask=mask)[0]
    if backward:
      out.backward(d_out)

  wait = lambda _: reference_trainer.synchronize(trainer.device)
  return attention_record(
    config,
    median_seconds(lambda: attention(backward=False), wait, iters),
    median_seconds(lambda: attention(backward=True), wait, iters),
    remat=False,
    rows=rows,
    timed="x_transformers Attend (the model's own)",
  )


def torch_matmuls(trainer: reference_trainer.TorchTrainer, config, rows: int, iters: int) -> dict:
  m, h = rows * (config.model.max_seq_len + 1), config.model.hidden_size
  options = dict(device=trainer.device, dtype=torch_dtype(trainer))
  x, w, dy = torch.randn(m, h, **options), torch.randn(h, 4 * h, **options), torch.randn(m, 4 * h, **options)
  wait = lambda _: reference_trainer.synchronize(trainer.device)
  return matmul_record(config, median_seconds(lambda: (x @ w, dy @ w.T, x.T @ dy), wait, iters), m, remat_full=False)


def torch_optimizer(trainer: reference_trainer.TorchTrainer, iters: int) -> dict:
  phases = [trainer.phase_seconds() for _ in range(iters)]
  return {
    'record': 'optimizer',
    'timed': 'clip_grad_norm_ + AdamW.step()',
    'per_step_s': statistics.median(p['clip_and_adamw'] for p in phases),
    'phases_s': {name: statistics.median(p[name] for p in phases) for name in phases[0]},
  }


def torch_side(config, steps: int, warmup: int, iters: int, hc_ablation: bool, precision: str) -> None:
  # JAX runs here on the host only (the diffusion tables): keep it off the GPU's memory.
  jax.config.update('jax_platforms', 'cpu')
  step, trainer, config = torch_step(config_lib.finalize(config), precision, steps, warmup)
  emit(step)
  rows = config.training.train_batch_size * passes_per_step(config)
  held = {'trainer': trainer}  # the last part lets go of it, to make room for its own model

  def hyper_connections() -> dict:
    held.clear()
    gc.collect()
    if torch.cuda.is_available():
      torch.cuda.empty_cache()
    one_stream, _, _ = torch_step(with_overrides(config, num_residual_streams=1), precision, steps, warmup)
    return {
      'record': 'hyper_connections',
      'step_s_one_stream': one_stream['step_s'],
      'per_step_s': step['step_s'] - one_stream['step_s'],
    }

  parts = {
    'attention': lambda: torch_attention(held['trainer'], config, rows, iters),
    'matmuls': lambda: torch_matmuls(held['trainer'], config, rows, iters),
    'optimizer': lambda: torch_optimizer(held['trainer'], iters),
  }
  del trainer
  if hc_ablation and config.model.num_residual_streams > 1:
    parts['hyper_connections'] = hyper_connections
  emit_parts('torch', parts)


# ---------------------------------------------------------------------------------------------
# Both sides side by side.


def read_results(paths: Sequence[str]) -> list[dict[str, Any]]:
  """The sides' records, grouped per run: {'label', 'step', part: record}, in the files' order."""
  runs = []
  for path in paths:
    run: dict[str, Any] = {}
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line.startswith('{'):
          record = json.loads(line)
          run[record['record']] = record
    if 'step' not in run:
      raise cli.UsageError(f'{path}: no step record (the side failed before its first measurement)')
    step = run['step']
    run['label'] = 'lgdlm_jax' if step['side'] == 'jax' else f'reference ({step["precision"]})'
    runs.append(run)
  return runs


def breakdown(run: dict[str, Any]) -> dict[str, float | None]:
  parts = {part: run[part].get('per_step_s') if part in run else None for part in PARTS}
  known = [v for v in parts.values() if v is not None]
  parts['other'] = run['step']['step_s'] - sum(known) if len(known) == len(PARTS) else None
  return parts


def compare(paths: Sequence[str]) -> None:
  runs = read_results(paths)
  fmt = lambda v, spec: '-' if v is None else format(v, spec)
  rows = [
    ('tokens/s', lambda r: fmt(r['step']['tokens_per_s'], ',.0f')),
    ('MFU', lambda r: fmt(r['step']['mfu'], '.1%')),
    ('peak memory GiB', lambda r: fmt(r['step']['peak_memory_bytes'] and r['step']['peak_memory_bytes'] / GIB, '.1f')),
    ('compile s', lambda r: fmt(r['step']['compile_s'], '.1f')),
    ('first step s (eager)', lambda r: fmt(r['step'].get('first_step_s'), '.1f')),
    ('batch', lambda r: str(r['step']['batch'])),
    ('step s', lambda r: fmt(r['step']['step_s'], '.3f')),
  ]
  rows += [
    (f'  {part}', functools.partial(lambda r, part: fmt(breakdown(r)[part], '.3f'), part=part))
    for part in (*PARTS, 'other')
  ]
  width = max(len(r['label']) for r in runs) + 2
  print(''.ljust(22) + ''.join(r['label'].rjust(width) for r in runs))
  for name, value in rows:
    print(name.ljust(22) + ''.join(value(r).rjust(width) for r in runs))
  for r in runs:
    for part in PARTS:
      if 'error' in r.get(part, {}):
        print(f'{r["label"]} {part}: not measured, {r[part]["error"]}')
  ours = next((r for r in runs if r['step']['side'] == 'jax'), None)
  references = [r for r in runs if r['step']['side'] == 'torch']
  ratios = {r['label']: ours['step']['tokens_per_s'] / r['step']['tokens_per_s'] for r in references} if ours else {}
  if ours and ours['step']['mfu'] is not None:
    met = 'met' if ours['step']['mfu'] >= MFU_TARGET else 'not met'
    print(f'lgdlm_jax MFU {ours["step"]["mfu"]:.1%} (target {MFU_TARGET:.0%}): {met}')
  for label, ratio in ratios.items():
    print(
      f'lgdlm_jax tokens/s = {ratio:.2f}x {label} (target {RATIO_TARGET:g}x): '
      f'{"met" if ratio >= RATIO_TARGET else "not met"}'
    )
  print(
    json.dumps(
      {
        'mfu': ours and ours['step']['mfu'],
        'mfu_target': MFU_TARGET,
        'tokens_per_s_ratio': ratios,
        'ratio_target': RATIO_TARGET,
        'breakdown_s': {r['label']: breakdown(r) for r in runs},
      }
    )
  )


# ---------------------------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  cli.define_config_flag(
    flag_values, argv, 'configs/cluster.py', 'A get_config() Python file (FILE.py or FILE.py:arg).'
  )
  flags.DEFINE_enum('side', None, SIDES, 'What to run: one side, or compare their results.', flag_values=flag_values)
  flags.DEFINE_integer('steps', 10, 'Timed train steps.', flag_values=flag_values)
  flags.DEFINE_integer(
    'warmup', 2, 'Untimed train steps first (PyTorch: counting its first step).', flag_values=flag_values
  )
  flags.DEFINE_integer(
    'iters', 5, 'Timed calls of each part of the breakdown (the median is kept).', flag_values=flag_values
  )
  flags.DEFINE_boolean(
    'hc_ablation',
    True,
    'Also time the step with one residual stream (the hyper-connections part of the breakdown; one more compile).',
    flag_values=flag_values,
  )
  flags.DEFINE_enum(
    'torch_precision',
    'bfloat16',
    ('bfloat16', 'autocast', 'float32'),
    "PyTorch side: 'bfloat16' as the reference trains (model cast to bfloat16), 'autocast' "
    '(float32 weights, bfloat16 autocast), or float32.',
    flag_values=flag_values,
  )
  flags.DEFINE_list('results', None, "For --side=compare: the sides' JSON-lines outputs.", flag_values=flag_values)


def work(flag_values: flags.FlagValues, args: list[str]) -> None:
  if args:
    raise cli.UsageError(f'unexpected arguments: {" ".join(args)}')
  if flag_values.side is None:
    raise cli.UsageError('--side is required (jax, torch or compare)')
  if flag_values.side == 'compare':
    if not flag_values.results:
      raise cli.UsageError('--side=compare needs --results=FILE,FILE')
    compare(flag_values.results)
  elif flag_values.side == 'jax':
    jax_side(flag_values.config, flag_values.steps, flag_values.warmup, flag_values.iters, flag_values.hc_ablation)
  else:
    torch_side(
      flag_values.config,
      flag_values.steps,
      flag_values.warmup,
      flag_values.iters,
      flag_values.hc_ablation,
      flag_values.torch_precision,
    )


if __name__ == '__main__':
  cli.main_exit(work, define_flags, __doc__)
