"""benchmarks/gpu.sh and gpu_bench.py without a GPU: the script end to end on CPU (--cpu-smoke), the
comparison of the sides' records, and the PyTorch reference step in each precision."""

import json
import subprocess

import numpy as np
import pytest
import torch

from benchmarks import gpu_bench
from lgdlm_jax import bench
from lgdlm_jax import config as config_lib
from lgdlm_jax.model import flops as model_flops
from lgdlm_jax.reference import trainer as reference_trainer
from tests.helpers import runs

PARTS = ('attention', 'matmuls', 'hyper_connections', 'optimizer')


def _write(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records) + 'a log line that is not JSON\n')
  return str(path)


def _step(side, step_s, tokens_per_s, **extra):
  return {
    'side': side,
    'record': 'step',
    'step_s': step_s,
    'tokens_per_s': tokens_per_s,
    'mfu': 0.3,
    'peak_memory_bytes': 2**30,
    'compile_s': 10.0,
    'batch': 4,
    **extra,
  }


def test_compare_breaks_each_step_down_and_gives_the_ratio(tmp_path, capsys):
  ours = _write(
    tmp_path / 'jax.jsonl',
    [_step('jax', 1.0, 400.0)]
    + [{'side': 'jax', 'record': part, 'per_step_s': 0.1 * (i + 1)} for i, part in enumerate(PARTS)],
  )
  # The reference ran out of time before its hyper-connections part: no 'other' either.
  reference = _write(
    tmp_path / 'torch.jsonl',
    [_step('torch', 2.0, 100.0, precision='bfloat16', compile_s=None)]
    + [{'side': 'torch', 'record': part, 'per_step_s': 0.5} for part in PARTS[:2]],
  )
  gpu_bench.compare([ours, reference])
  table, summary = capsys.readouterr().out.strip().rsplit('\n', 1)
  summary = json.loads(summary)
  assert summary['tokens_per_s_ratio'] == {'reference (bfloat16)': 4.0}
  assert summary['breakdown_s']['lgdlm_jax'] == pytest.approx(
    {'attention': 0.1, 'matmuls': 0.2, 'hyper_connections': 0.3, 'optimizer': 0.4, 'other': 0.0}
  )
  assert summary['breakdown_s']['reference (bfloat16)'] == {
    'attention': 0.5,
    'matmuls': 0.5,
    'hyper_connections': None,
    'optimizer': None,
    'other': None,
  }
  assert 'reference (bfloat16)' in table and '400' in table and '30.0%' in table


def test_compare_refuses_a_side_without_its_step(tmp_path):
  empty = _write(tmp_path / 'torch.jsonl', [])
  with pytest.raises(gpu_bench.cli.UsageError, match='no step record'):
    gpu_bench.compare([empty])


def test_dense_and_attention_flops_add_up_to_the_model_flops():
  config = config_lib.finalize(runs.tiny_config())
  s, blocks = config.model.max_seq_len, config.model.n_blocks
  assert model_flops.attention_flops_per_sequence(config.model) == blocks * 2 * 2 * (s + 1) ** 2 * 8 * 64
  attention = (
    3
    * config.training.train_batch_size
    * gpu_bench.passes_per_step(config)
    * (model_flops.attention_flops_per_sequence(config.model))
  )
  assert gpu_bench.dense_flops_per_step(config) + attention == bench.train_flops_per_step(config)


@pytest.mark.parametrize(
  'precision,param_dtype', [('float32', torch.float32), ('bfloat16', torch.bfloat16), ('autocast', torch.float32)]
)
def test_reference_step_trains_in_each_precision(precision, param_dtype):
  config = config_lib.finalize(runs.tiny_config(**{'training.train_batch_size': 2}))
  trainer = reference_trainer.TorchTrainer(config, bench.synthetic_batch(config), 'cpu', precision)
  before = [p.detach().clone() for p in trainer.model.parameters()]
  trainer.train_step()
  phases = trainer.phase_seconds()
  assert {p.dtype for p in trainer.model.parameters()} == {param_dtype}
  assert (
    np.isfinite(trainer.loss)
    and trainer.step == 2
    and set(phases) == {'forward_and_loss', 'backward', 'clip_and_adamw'}
  )
  assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


@pytest.mark.slow  # ~1-2 minutes on an idle 2-core machine: three processes, two compiles of a tiny model
def test_gpu_script_runs_every_step_on_cpu(tmp_path):
  result = subprocess.run(
    ['bash', 'benchmarks/gpu.sh', '--cpu-smoke', '--wheels', str(tmp_path / 'no_wheels'), '--out', str(tmp_path)],
    cwd=runs.REPO,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for name in ('jax', 'torch_bfloat16', 'torch_autocast'):
    records = [json.loads(line) for line in (tmp_path / f'{name}.jsonl').read_text().splitlines()]
    assert [r['record'] for r in records] == ['step', 'attention', 'matmuls', 'optimizer', 'hyper_connections']
    assert all(r['per_step_s'] > 0 for r in records[1:4]) and records[0]['tokens_per_s'] > 0
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(summary['tokens_per_s_ratio']) == {'reference (bfloat16)', 'reference (autocast)'}
  assert all(v is not None for parts in summary['breakdown_s'].values() for v in parts.values())
