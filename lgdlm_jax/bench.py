"""Benchmark of the compiled cycle_vae train step: python -m lgdlm_jax.bench --config configs/smoke.py.

Prints one JSON line: config, backend, device, compile seconds, steps/s, tokens/s, non-padding
tokens/s and the share of padding in the batch (lgdlm_jax.training.throughput), model FLOPs per
step, MFU (on accelerators whose peak is known) and peak device memory. Timing starts after
`--warmup` steps and blocks on the result of the last step only, so dispatch overlaps as in training.
Steps 0, 1, ... run the cycle terms the config's schedule gives them (loss.cycle_every, warmups),
as in training: every train-step program they use is compiled first and counted ('programs',
'compile_s' is their sum), and the FLOPs per step are the mean over the timed steps.
With --compile_only the step is compiled from shapes alone (nothing allocated) and the line reports
compile seconds and the compiler's memory analysis per device instead; with --topology it is
compiled for accelerators this machine does not have (lgdlm_jax.training.aot), and says whether it fits.
For a TPU, the line also holds the TPU compiler's own ESTIMATE of the step's time (its cost model's
cycles, every loop counted per iteration: lgdlm_jax.training.step_estimate) and from it
estimated steps/s, tokens/s, non-padding tokens/s (the batch's share of padding, or
--padding_fraction for the data the run will see) and MFU, all under 'estimate':

    python -m lgdlm_jax.bench --compile_only --topology v5e:2x4 --config configs/cluster.py
    JAX_PLATFORMS=cpu python -m lgdlm_jax.bench --compile_only --topology h100:8 --config configs/cluster.py \
        --config.training.train_batch_size=32
"""

from collections.abc import Sequence
import json
import time
from typing import Any

from absl import flags
import jax
import ml_collections
import numpy as np

from lgdlm_jax import cli
from lgdlm_jax import config as config_lib
from lgdlm_jax.model import flops as model_flops
from lgdlm_jax.objective import cycle_schedule
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.objective import plan as plan_lib
from lgdlm_jax.training import aot
from lgdlm_jax.training import gradients
from lgdlm_jax.training import setup as training_setup
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step_estimate
from lgdlm_jax.training import throughput

# Dense bf16 peak FLOP/s per chip, by jax device_kind prefix.
PEAK_FLOPS = {
  'NVIDIA H100': 989e12,
  'NVIDIA H200': 989e12,
  'NVIDIA A100': 312e12,
  'TPU v4': 275e12,
  'TPU v5 lite': 197e12,
  'TPU v5e': 197e12,
  'TPU v5p': 459e12,
  'TPU v6 lite': 918e12,
}


def train_flops_per_step(config: ml_collections.ConfigDict, terms: cycle_schedule.TermSet | None = None) -> float:
  """Forward + backward (3x forward) of every pass the objective runs for one global batch, with the
  cycle terms `terms` (default: every term with a base weight above 0).

  The passes come from lgdlm_jax.objective.plan.pass_plan, the plan the objective itself runs. The
  objective never runs the cluster head, so it is not counted. A latentDLM mode (loss.loss_type) is one
  pass, with the text head except in t2l (a schedule of modes is counted as if every step read the text).
  """
  if config.loss.loss_type != 'cycle_vae':
    text_logits = config.loss.loss_type != 't2l'
    return (
      3
      * config.training.train_batch_size
      * model_flops.forward_flops_per_sequence(config.model, text_logits=text_logits)
    )
  per_sequence = sum(
    model_flops.forward_flops_per_sequence(config.model, text_logits=planned.text_logits)
    for planned in plan_lib.in_order(plan_lib.pass_plan(options_lib.from_config(config), terms))
  )
  return 3 * config.training.train_batch_size * per_sequence


def peak_flops(device: jax.Device) -> float | None:
  return next((v for k, v in PEAK_FLOPS.items() if device.device_kind.startswith(k)), None)


def attention_flops_per_step(config: ml_collections.ConfigDict, terms: cycle_schedule.TermSet | None = None) -> float:
  """The attention core's FLOPs in one step (forward + backward, every pass); packed rows have K latent
  tokens instead of one, S + K queries over S + K keys."""
  passes = len(plan_lib.in_order(plan_lib.pass_plan(options_lib.from_config(config), terms)))
  per_sequence = model_flops.attention_flops_per_sequence(config.model)
  if config.data.packing:
    s = config.model.max_seq_len
    per_sequence *= ((s + config.data.max_segments_per_row) / (s + 1)) ** 2
  return 3 * config.training.train_batch_size * passes * per_sequence


def estimate_report(
  compiled: Any, config: ml_collections.ConfigDict, devices: list[Any], padding_fraction: float
) -> dict[str, Any] | None:
  """The TPU compiler's estimate of one step (lgdlm_jax.training.step_estimate) as steps/s, tokens/s,
  non-padding tokens/s and MFU of the whole slice; None where the compiler estimates no time.

  The compiler does not cost Pallas kernels (the splash attention): where the step runs some, the
  attention core's FLOPs are added at the chip's peak (an optimistic bound for that part), and
  'attention_s' says how much that is.
  """
  estimate = step_estimate.estimate_step(compiled, devices[0])
  if estimate is None:
    return None
  peak = peak_flops(devices[0])
  attention_s = attention_flops_per_step(config) / (peak * len(devices)) if estimate.uncosted_kernels else 0.0
  seconds = estimate.seconds + attention_s
  tokens = config.training.train_batch_size * config.model.max_seq_len
  steps_per_s = 1.0 / seconds
  return {
    'what': "an ESTIMATE by the TPU compiler's cost model (every loop counted per iteration), not a measurement",
    'step_s': seconds,
    'compiler_s': estimate.seconds,
    'attention_s': attention_s,
    'steps_per_s': steps_per_s,
    'tokens_per_s': tokens * steps_per_s,
    'real_tokens_per_s': tokens * (1.0 - padding_fraction) * steps_per_s,
    'padding_fraction': padding_fraction,
    'mfu': train_flops_per_step(config) * steps_per_s / (peak * len(devices)),
    'loops': len(estimate.loops),
    'loop_scale': round(estimate.cycles / max(estimate.cycles_loops_once, 1), 2),
    'uncounted_loops': estimate.uncounted_loops,
    'uncosted_kernels': estimate.uncosted_kernels,
    'optimal_seconds_loops_once': estimate.optimal_seconds,
  }


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """A seeded global batch of random tokens (no padding) and latents, as host arrays; with
  data.packing, every row holds K = data.max_segments_per_row samples of S // K tokens (the last
  one takes the remainder), in the packed batch's layout."""
  b, s = config.training.train_batch_size, config.model.max_seq_len
  rng = np.random.default_rng(seed)
  batch = {
    'input_ids': rng.integers(0, config.model.vocab_size, (b, s)).astype(np.int32),
    'attention_mask': np.ones((b, s), bool),
    'latent': rng.standard_normal((b, config.model.latent_dim)).astype(np.float32),
  }
  if not config.data.packing:
    return batch
  k = config.data.max_segments_per_row
  segment_ids = np.minimum(np.arange(s) // (s // k), k - 1)  # 0-based segment of each position
  lengths = np.bincount(segment_ids, minlength=k)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  return {
    **batch,
    'segment_ids': np.broadcast_to(segment_ids + 1, (b, s)).astype(np.int32),
    'positions': np.broadcast_to(np.arange(s) - starts[segment_ids], (b, s)).astype(np.int32),
    'latent': rng.standard_normal((b, k, config.model.latent_dim)).astype(np.float32),
    'latent_mask': np.ones((b, k), bool),
    'segment_lengths': np.broadcast_to(lengths, (b, k)).astype(np.int32),
  }


def _describe(config: ml_collections.ConfigDict, devices: list[jax.Device], platform: str) -> dict:
  """The fields every result line starts with: what was run, where, and its model FLOPs per step."""
  return {
    'model': {k: config.model[k] for k in config_lib.SUMMARY_MODEL_KEYS},
    'batch': config.training.train_batch_size,
    'mesh': {'fsdp': config.mesh.fsdp, 'data': len(devices) // config.mesh.fsdp},
    'cycle_terms': cycle_schedule.from_config(config).configured_terms().name
    if config.loss.loss_type == 'cycle_vae'
    else config.loss.loss_type,
    'round_gradients': gradients.round_gradients(config),
    'backend': platform,
    'device': devices[0].device_kind,
    'devices': len(devices),
    'jax': jax.__version__,
    'model_flops_per_step': train_flops_per_step(config),
  }


def compile_only(config: ml_collections.ConfigDict, topology: str = '', padding_fraction: float | None = None) -> dict:
  """Compiles the train step from shapes alone (no parameters are created) for this machine's devices
  or for `topology` (lgdlm_jax.training.aot), and reports the compile seconds and the compiler's memory
  analysis of the step per device: how a large config fits before any run; on a TPU also the
  compiler's estimate of its speed ('estimate', see estimate_report), whose non-padding tokens/s
  count `padding_fraction` of the tokens as padding (None: the benchmark batch's own share)."""
  setup = training_setup.build(config, topology)
  config, devices = setup.resolved, setup.devices
  abstract_state, shardings = setup.abstract_state(jax.random.key(0))
  programs, *_ = setup.compile(shardings)
  step_fn = programs.for_terms(programs.schedule.configured_terms())
  host_batch = synthetic_batch(config)
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host_batch)
  abstract_key = jax.eval_shape(lambda: jax.random.key(1))
  started = time.perf_counter()
  lowered = step_fn.lower(abstract_state, abstract_batch, abstract_key)
  lower_seconds = time.perf_counter() - started
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - started
  return {
    **_describe(config, devices, setup.platform),
    'trace_and_lower_s': round(lower_seconds, 2),
    'compile_s': round(compile_seconds, 2),
    **aot.memory_report(compiled.memory_analysis(), devices[0]),
    'estimate': estimate_report(
      compiled, config, devices, padding_fraction or throughput.count_tokens(host_batch).padding_fraction
    ),
  }


def benchmark(
  config: ml_collections.ConfigDict,
  steps: int,
  warmup: int,
  host_batch: dict[str, np.ndarray] | None = None,
  sync_each_step: bool = False,
) -> dict:
  """Times the compiled train step on `host_batch` (default: synthetic_batch(config)).

  sync_each_step: wait for every step and report each one's seconds ('step_seconds'), so that a
  noisy machine's outliers can be seen; steps then no longer overlap their dispatch.
  """
  setup = training_setup.build(config)
  config, mesh = setup.resolved, setup.mesh
  state, shardings = setup.create_state(jax.random.key(0))
  programs, *_ = setup.compile(shardings)
  host_batch = synthetic_batch(config) if host_batch is None else host_batch
  batch = sharding.global_batch(host_batch, mesh)
  key = jax.random.key(1)

  compiled, compile_seconds = {}, {}
  for terms in programs.schedule.term_sets_between(0, warmup + steps):
    started = time.perf_counter()
    compiled[terms] = programs.for_terms(terms).lower(state, batch, key).compile()
    compile_seconds[terms.name] = round(time.perf_counter() - started, 2)
  step_terms = [programs.schedule.terms_at(step) for step in range(warmup + steps)]
  for terms in step_terms[:warmup]:
    state, metrics = compiled[terms](state, batch, key)
  jax.block_until_ready(state)
  step_seconds = []
  started = last = time.perf_counter()
  for terms in step_terms[warmup:]:
    state, metrics = compiled[terms](state, batch, key)
    if sync_each_step:
      jax.block_until_ready(metrics)
      now = time.perf_counter()
      step_seconds.append(round(now - last, 3))
      last = now
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - started

  device = jax.devices()[0]
  steps_per_sec = steps / elapsed
  peak = peak_flops(device)
  memory = device.memory_stats() or {}
  timed = programs.schedule.term_sets_between(warmup, warmup + steps)
  flops = sum(train_flops_per_step(config, terms) * count for terms, count in timed.items()) / steps
  return {
    **_describe(config, jax.devices(), jax.default_backend()),
    'model_flops_per_step': flops,
    'programs': {t.name: n for t, n in timed.items()},
    'compile_s': round(sum(compile_seconds.values()), 2),
    'compile_s_by_program': compile_seconds,
    'steps_per_s': steps_per_sec,
    **throughput.rates(throughput.count_tokens(host_batch), 1.0 / steps_per_sec),
    'mfu': None if peak is None else flops * steps_per_sec / (peak * jax.device_count()),
    'peak_memory_bytes': memory.get('peak_bytes_in_use'),
    'final_loss': float(metrics['loss']),
    **({'step_seconds': step_seconds} if sync_each_step else {}),
  }


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  cli.define_config_flag(flag_values, argv, 'configs/smoke.py', 'A get_config() Python file (FILE.py or FILE.py:arg).')
  flags.DEFINE_integer('steps', 10, 'Timed steps.', flag_values=flag_values)
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.', flag_values=flag_values)
  flags.DEFINE_boolean(
    'compile_only',
    False,
    'Only compile the step from shapes (no parameters are created) and '
    'report compile time and the memory analysis per device.',
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    'topology',
    '',
    'With --compile_only: compile for these accelerators instead of this '
    "machine's: a TPU slice (v5e:2x4, v5p:2x2x1, v4:2x2x1, v6e:2x2; needs the tpu extra) "
    'or NVIDIA GPUs (h100, h100:8 for an 8-GPU node; needs the cuda extra and '
    'JAX_PLATFORMS=cpu).',
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    'padding_fraction',
    None,
    'With --compile_only on a TPU: the share of padding among the tokens of the data the run will '
    "see, for the estimate's non-padding tokens/s (default: the benchmark batch's, which has none).",
    lower_bound=0.0,
    upper_bound=1.0,
    flag_values=flag_values,
  )


def work(flag_values: flags.FlagValues, args: list[str]) -> None:
  if args:
    raise cli.UsageError(f'unexpected arguments: {" ".join(args)}')
  config = config_lib.finalize(flag_values.config)
  if flag_values.topology and not flag_values.compile_only:
    raise cli.UsageError('--topology needs --compile_only (a step can only run on the devices this machine has)')
  if flag_values.padding_fraction is not None and not flag_values.compile_only:
    raise cli.UsageError('--padding_fraction needs --compile_only (a timed run counts the padding of its batch)')
  if flag_values.compile_only:
    print(json.dumps(compile_only(config, flag_values.topology, flag_values.padding_fraction)))
  else:
    print(json.dumps(benchmark(config, flag_values.steps, flag_values.warmup)))


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(work, define_flags, argv, doc=__doc__)


if __name__ == '__main__':
  cli.main_exit(work, define_flags, __doc__)
