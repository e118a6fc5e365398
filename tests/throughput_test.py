"""Tokens/s, non-padding tokens/s and the share of padding: counted from the batch's attention mask on
the host, in the training log, the progress line and the benchmark."""

import numpy as np
import pytest

from lgdlm_jax import console
from lgdlm_jax.training import loop
from lgdlm_jax.training import metrics_log
from lgdlm_jax.training import throughput
from tests.helpers import datasets
from tests.helpers import runs

# 2 rows of 4 positions: 3 + 1 real tokens.
HAND_BATCH = {'attention_mask': np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool), 'input_ids': np.zeros((2, 4), np.int32)}


def test_tokens_and_rates_of_a_hand_batch():
  tokens = throughput.count_tokens(HAND_BATCH)
  assert tokens == throughput.Tokens(real=4, total=8) and tokens.padding_fraction == 0.5
  assert throughput.rates(tokens, 2.0) == {'tokens_per_s': 4.0, 'real_tokens_per_s': 2.0, 'padding_fraction': 0.5}
  # Two processes: this process's rows stand for each one's.
  assert throughput.count_tokens(HAND_BATCH, processes=2) == throughput.Tokens(real=8, total=16)
  assert set(throughput.rates(tokens, 1.0, per='sec')) == {'tokens_per_sec', 'real_tokens_per_sec', 'padding_fraction'}


def test_progress_line_shows_non_padding_tokens_per_second_and_padding(capsys, monkeypatch):
  clock = iter([100.0, 104.0, 104.0])  # the first step's dispatch, then two readings at the logged step
  monkeypatch.setattr(console.time, 'perf_counter', lambda: next(clock))
  progress = console.Progress(start=0, total=3)
  progress.update(1, real_tokens=4)  # starts the clock: its tokens are not in the rate
  progress.update(2, real_tokens=6)
  progress.update(3, real_tokens=10)
  progress.logged(3, 0.5, padding_fraction=0.25)
  progress.close()
  # 2 steps and 16 real tokens in 4 s.
  assert capsys.readouterr().out.splitlines() == ['step 3/3: loss 0.5000, 0.50 steps/s, 4 real tokens/s, 25% padding']


@pytest.mark.slow  # a 2-step training run of the tiny model
def test_training_log_counts_the_padding_of_every_batch(tmp_path):
  """Every sample has 10 real tokens of 12 (datasets.sample_arrays pads its last 2 positions)."""
  seq_len, steps = 12, 2
  token_dir, latent_dir = str(tmp_path / 'tok'), str(tmp_path / 'lat')
  for directory in (token_dir, latent_dir):
    (tmp_path / directory).mkdir()
  for i in range(16):
    datasets.write_pair(token_dir, latent_dir, f's{i:03d}', i, length=seq_len, latent=np.zeros(8, np.float32))
  config = runs.tiny_config(
    **{
      'data.token_dir': token_dir,
      'data.latent_dir': latent_dir,
      'training.num_train_steps': steps,
      'training.save_every': 0,
      'training.print_examples': 0,
    }
  )
  loop.run(config, str(tmp_path / 'run'))
  records = [r for r in metrics_log.read_log(str(tmp_path / 'run')) if 'loss' in r]
  assert len(records) == steps
  for record in records:
    assert record['padding_fraction'] == pytest.approx(2 / 12)
    assert record['tokens_per_sec'] * record['step_time'] == pytest.approx(8 * seq_len)
    assert record['real_tokens_per_sec'] == pytest.approx(record['tokens_per_sec'] * 10 / 12)
