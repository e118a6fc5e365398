"""The plot of training logs: every loss term (training, and validation as dashed lines with dots),
the cycle weights, the validation sampler metrics, the learning rate, the gradient norm and the
non-finite steps, several runs overlaid (one colour per run, labelled by its directory name).
Panels no run has values for are left out. The loop writes its own log's plot to
WORKDIR/training_log.png at each evaluation; `python -m lgdlm_jax.plot` draws any workdirs.
"""

from collections.abc import Sequence
import math
import os

from matplotlib.figure import Figure

from lgdlm_jax import errors
from lgdlm_jax.training import metrics_log

COLUMNS = 4
# (title, keys, log scale). A training key k is drawn with its validation counterpart val_k, if any;
# validation values (val_*) as dots joined by dashes.
PANELS = (
  ('total loss', ('loss',), False),
  ('base T2L latent loss', ('base_t2l_latent_loss',), False),
  ('base L2T text loss', ('base_l2t_text_loss',), False),
  ('cycle text loss', ('cycle_text_loss',), False),
  ('cycle latent loss', ('cycle_latent_loss',), False),
  # The training weights only: validation weighs every term at its base weight.
  ('cycle weights', ('cycle_text_weight', 'cycle_latent_weight'), False),
  ('L2T token accuracy (val)', ('val_l2t_onepass_acc', 'val_l2t_sample_acc'), False),
  ('T2L cosine with the true latent (val)', ('val_t2l_cosine',), False),
  ('cycle reconstructions (val)', ('val_cycle_t2l2t_acc', 'val_cycle_l2t2l_cosine'), False),
  ('learning rate', ('lr',), False),
  ('gradient norm', ('grad_norm',), True),
  ('non-finite steps (total so far)', ('nonfinite_steps',), False),
)
VAL_PREFIX = 'val_'


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of the records that have `key`; non-finite values become NaN (a gap)."""
  points = [(r['step'], r[key]) for r in records if isinstance(r.get(key), (int, float))]
  return [s for s, _ in points], [v if math.isfinite(v) else math.nan for _, v in points]


def _names(key: str, title: str) -> tuple[str, ...]:
  """The log keys one panel key stands for: itself, and its validation counterpart for the losses."""
  return (key,) if key.startswith(VAL_PREFIX) or title == 'cycle weights' else (key, VAL_PREFIX + key)


def _labels(workdirs: Sequence[str]) -> list[str]:
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(w) for w in workdirs]


def draw(runs: dict[str, list[dict]]) -> Figure:
  """One figure of the PANELS that any run has values for; `runs` maps a label to its log records."""
  colours = [f'C{i % 10}' for i in range(len(runs))]
  has_values = lambda title, keys: any(
    _series(records, name)[0] for records in runs.values() for key in keys for name in _names(key, title)
  )
  panels = [panel for panel in PANELS if has_values(*panel[:2])]
  if not panels:
    raise errors.InputError(f'no plottable records in {", ".join(runs)}')
  rows = math.ceil(len(panels) / COLUMNS)
  figure = Figure(figsize=(4.4 * COLUMNS, 3.1 * rows), dpi=90, layout='constrained')
  for index, (title, keys, log_scale) in enumerate(panels):
    axes = figure.add_subplot(rows, COLUMNS, index + 1)
    for (label, records), colour in zip(runs.items(), colours):
      for key_index, key in enumerate(keys):
        style = ('-', ':')[key_index % 2]
        for name in _names(key, title):
          steps, values = _series(records, name)
          if not steps:
            continue
          val = name.startswith(VAL_PREFIX)
          text = name if len(runs) == 1 else f'{label}: {name}'
          axes.plot(
            steps,
            values,
            ('--', '-.')[key_index % 2] if val else style,
            color=colour,
            marker=('o', 's')[key_index % 2] if val else None,
            markersize=3,
            linewidth=1.0 if val else 1.2,
            label=text,
          )
      if title == 'total loss':
        bad = [r['step'] for r in records if r.get('step_was_finite') == 0.0]
        for step in bad:
          axes.axvline(step, color='red', linewidth=0.6, alpha=0.5)
        if bad:
          axes.plot(
            [],
            [],
            color='red',
            linewidth=0.6,
            label=f'{label}: non-finite step' if len(runs) > 1 else 'non-finite step',
          )
    axes.set_title(title, fontsize=10)
    axes.set_xlabel('step', fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    if log_scale:
      axes.set_yscale('log')
    axes.legend(fontsize=6)
  return figure


def write_plot(workdirs: Sequence[str], out: str) -> None:
  """Draws the logs of `workdirs` into the PNG `out` (written whole, then moved into place)."""
  runs = {}
  for label, workdir in zip(_labels(workdirs), workdirs):
    path = os.path.join(workdir, metrics_log.LOG_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path}: no such file (is {workdir} a training workdir?)')
    runs[label] = metrics_log.read_log(workdir)
    if not runs[label]:
      raise errors.InputError(f'no plottable records in {path}: it holds no log record')
  figure = draw(runs)
  staged = f'{out}.tmp.png'
  try:
    figure.savefig(staged)
    os.replace(staged, out)
  except OSError as e:
    if os.path.exists(staged):  # a full disk leaves a cut-short file: never leave it beside the plot
      os.remove(staged)
    raise OSError(e.errno, e.strerror, e.filename or staged) from e  # a failed write() names no file
