"""python -m lgdlm_jax.plot: every panel a log has values for, several runs overlaid, one-line errors."""

import json
import math

from lgdlm_jax import plot
from lgdlm_jax.training import log_plot
from lgdlm_jax.training import metrics_log


def write_log(workdir, records):
  workdir.mkdir()
  (workdir / metrics_log.LOG_FILE).write_text(''.join(json.dumps(r) + '\n' for r in records))
  return str(workdir)


def train_record(step, cycle):
  record = {
    'step': step,
    'loss': 5.0 / step,
    'base_t2l_latent_loss': 0.3,
    'base_l2t_text_loss': 4.0 / step,
    'lr': 1e-3,
    'grad_norm': 2.0,
    'nonfinite_steps': 0.0,
    'step_was_finite': 1.0,
  }
  if cycle:
    record.update(cycle_text_loss=4.5 / step, cycle_text_weight=0.1, cycle_latent_loss=0.3, cycle_latent_weight=0.1)
  return record


def test_plot_overlays_runs_and_draws_every_panel_with_values(tmp_path):
  cycle = [train_record(s, cycle=s % 2 == 1) for s in range(1, 9)]
  cycle[4].update(loss=math.nan, step_was_finite=0.0, nonfinite_steps=1.0)  # json writes NaN; read back as nan
  cycle.append(
    {'step': 8, 'val_loss': 4.0, 'val_base_l2t_text_loss': 3.5, 'val_l2t_onepass_acc': 0.2, 'val_t2l_cosine': 0.1}
  )
  base = [train_record(s, cycle=False) for s in range(1, 5)]
  runs = [write_log(tmp_path / 'cycle', cycle), write_log(tmp_path / 'base', base)]
  figure = log_plot.draw({name: metrics_log.read_log(w) for name, w in zip(('cycle', 'base'), runs)})
  titles = [axes.get_title() for axes in figure.axes]
  assert titles == [
    'total loss',
    'base T2L latent loss',
    'base L2T text loss',
    'cycle text loss',
    'cycle latent loss',
    'cycle weights',
    'L2T token accuracy (val)',
    'T2L cosine with the true latent (val)',
    'learning rate',
    'gradient norm',
    'non-finite steps (total so far)',
  ]
  total = figure.axes[0]
  labels = [line.get_label() for line in total.get_lines() if not line.get_label().startswith('_')]
  assert labels == ['cycle: loss', 'cycle: val_loss', 'cycle: non-finite step', 'base: loss']
  assert total.get_lines()[0].get_color() != total.get_lines()[-1].get_color()  # one colour per run

  out = tmp_path / 'runs.png'
  assert plot.main([*runs, '--out', str(out)]) == 0
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and 10_000 < out.stat().st_size < 500_000


def test_plot_errors_are_one_line(tmp_path, capsys):
  assert plot.main([str(tmp_path / 'missing'), '--out', str(tmp_path / 'x.png')]) == 1
  assert 'training_log.jsonl: no such file' in capsys.readouterr().err
  assert plot.main(['--out', str(tmp_path / 'x.png')]) == 2
  empty = write_log(tmp_path / 'empty', [])
  assert plot.main([empty, '--out', str(tmp_path / 'x.png')]) == 1
  assert 'no plottable records' in capsys.readouterr().err
  assert not (tmp_path / 'x.png').exists()
