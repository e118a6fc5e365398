"""What a training run prints: our own log lines without the libraries' INFO logs (unless --verbose),
progress lines when stdout is a file, and the checks `main` makes before any start-up work."""

import logging as python_logging
import os
import subprocess
import sys

from absl import logging
import orbax.checkpoint
import pytest

from lgdlm_jax import console
from lgdlm_jax import main
from lgdlm_jax.training import loop
from lgdlm_jax.training import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'configs', 'smoke.py')
TINY = [
  '--config.model.vocab_size=97',
  '--config.tokenizer.vocab_size=97',
  '--config.tokenizer.mask_token_id=3',
  '--config.model.hidden_size=32',
  '--config.model.n_blocks=1',
  '--config.model.cond_dim=32',
  '--config.model.max_seq_len=12',
  '--config.model.num_residual_streams=1',
  '--config.model.latent_dim=8',
  '--config.data.synthetic_num_samples=64',
  '--config.training.print_examples=0',
]


def _snapshot(directory) -> dict[str, int]:
  """Every file and folder under `directory` with its modification time."""
  found = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      found[os.path.join(root, name)] = os.stat(os.path.join(root, name)).st_mtime_ns
  return found


def _record(pathname: str, level: int = python_logging.INFO) -> python_logging.LogRecord:
  return python_logging.LogRecord('absl', level, pathname, 1, 'a message', None, None)


@pytest.fixture
def absl_handler():
  handler = logging.get_absl_handler()
  formatter, filters, verbosity = handler.python_handler.formatter, list(handler.filters), logging.get_verbosity()
  yield handler
  handler.setFormatter(formatter)  # as it was, for the tests that follow
  handler.filters[:] = filters
  logging.set_verbosity(verbosity)


def test_library_info_lines_are_hidden_unless_verbose(absl_handler):
  ours, orbax_file = loop.__file__, orbax.checkpoint.__file__
  console.configure_logging(verbose=False)
  assert absl_handler.filter(_record(ours))
  assert not absl_handler.filter(_record(orbax_file))
  assert absl_handler.filter(_record(orbax_file, python_logging.WARNING))
  assert absl_handler.format(_record(ours)).endswith(' a message')
  assert 'WARNING: a message' in absl_handler.format(_record(orbax_file, python_logging.WARNING))
  console.configure_logging(verbose=True)
  assert absl_handler.filter(_record(orbax_file))


def test_progress_prints_a_line_per_logged_step_when_stdout_is_not_a_terminal(capsys):
  progress = console.Progress(start=0, total=5)
  for step in range(1, 4):
    progress.update(step)
    progress.logged(step, 1.0 / step)
  progress.close()
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == 'step 1/5: loss 1.0000'  # no rate yet: the clock starts after the first step
  assert lines[2].startswith('step 3/5: loss 0.3333, ') and lines[2].endswith(' steps/s')
  assert len(lines) == 3


@pytest.fixture
def no_start_up(monkeypatch):
  """Fails the test if main gets as far as jax.distributed or the training loop."""

  def refuse(*args, **kwargs):
    raise AssertionError('start-up work began')

  monkeypatch.setattr(runtime, 'maybe_initialize', refuse)
  monkeypatch.setattr(loop, 'run', refuse)


def _main(argv, capsys):
  code = main.main([f'--config={SMOKE}', *argv])
  out, err = capsys.readouterr()
  return code, out, err


@pytest.mark.parametrize(
  'make_argv, message',
  [
    (lambda d: [f'--workdir={d}/file'], 'file: is a file, not a directory'),
    (lambda d: [f'--workdir={d}/w', f'--config.data.data_dir={d}/none'], "data.data_dir='DIR/none': no such directory"),
    (
      lambda d: [f'--workdir={d}/w', f'--config.data.data_dir={d}'],
      'no manifest.json (packed data) and no tokens/train/',
    ),
    (
      lambda d: [f'--workdir={d}/w', f'--config.data.token_dir={d}/t', f'--config.data.latent_dir={d}'],
      "data.token_dir='DIR/t': no such directory",
    ),
    (lambda d: [f'--workdir={d}/w', f'--config.init_from={d}/ref.pt'], "init_from='DIR/ref.pt': no such file"),
  ],
)
def test_bad_paths_are_one_line_before_start_up(make_argv, message, tmp_path, capsys, no_start_up):
  (tmp_path / 'file').write_text('not a workdir')
  code, out, err = _main(make_argv(str(tmp_path)), capsys)
  assert code == 1, err
  assert err.strip().count('\n') == 0 and message.replace('DIR', str(tmp_path)) in err, err
  assert not (tmp_path / 'w').exists()


def test_a_finished_run_says_so_and_writes_nothing(tmp_path, capsys, no_start_up):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '4').mkdir(parents=True)
  (workdir / 'checkpoints' / '2').mkdir()
  before = _snapshot(workdir)
  code, out, err = _main([f'--workdir={workdir}', '--config.training.num_train_steps=4'], capsys)
  assert code == 0 and err == ''
  assert (
    out == f'{workdir} is already at step 4 of 4: nothing to train (raise --config.training.num_train_steps '
    'to continue)\n'
  )
  assert _snapshot(workdir) == before


@pytest.mark.slow  # a real run of a tiny model (about 30-60 s): the only check of what a user's console shows
def test_a_run_to_a_file_shows_our_lines_and_progress_then_a_rerun_has_nothing_to_do(tmp_path):
  workdir = tmp_path / 'run'
  command = [
    sys.executable,
    '-m',
    'lgdlm_jax.main',
    f'--config={SMOKE}',
    f'--workdir={workdir}',
    *TINY,
    '--config.training.num_train_steps=4',
    '--config.training.save_every=2',
    '--config.training.eval_every=0',
  ]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr
  # One line per logged step, where the time went, then where the log is (no evaluation here, so no
  # plot and no examples).
  assert [line.split(':')[0] for line in first.stdout.splitlines()] == [f'step {s}/4' for s in range(1, 5)] + [
    'Time',
    'Training log',
  ]
  assert 'Attention: xla' in first.stderr
  assert 'orbax' not in first.stderr.lower() and 'grain' not in first.stderr.lower(), first.stderr
  files = _snapshot(workdir)
  again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and again.stderr == '', again.stderr
  assert again.stdout.startswith(f'{workdir} is already at step 4 of 4')
  assert _snapshot(workdir) == files
