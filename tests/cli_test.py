"""Every `python -m lgdlm_jax.X` entry point: --help exits 0, and bad flags, config keys, values and paths
are one line on stderr with a non-zero exit status, before any work starts."""

import os
import subprocess
import sys

import pytest

from lgdlm_jax import bench
from lgdlm_jax import config as config_lib
from lgdlm_jax import evaluate
from lgdlm_jax import main
from lgdlm_jax import plot
from lgdlm_jax import prepare_data
from lgdlm_jax import sample
from lgdlm_jax.convert import __main__ as convert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'configs', 'smoke.py')
ENTRY_POINTS = {
  'main': main.main,
  'bench': bench.main,
  'sample': sample.main,
  'prepare_data': prepare_data.main,
  'convert': convert.main,
  'plot': plot.main,
  'evaluate': evaluate.main,
}
# A flag of each entry point's own, and a misspelling of it.
OWN_FLAG = {
  'main': ('workdir', 'wrokdir'),
  'bench': ('compile_only', 'compile_olny'),
  'sample': ('out', 'outt'),
  'prepare_data': ('out', 'outt'),
  'convert': ('output', 'outptu'),
  'plot': ('out', 'otu'),
  'evaluate': ('workdir', 'wrokdir'),
}


def _run(entry, argv, capsys):
  code = ENTRY_POINTS[entry](argv)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.mark.parametrize('entry', sorted(ENTRY_POINTS))
def test_help_exits_zero_and_lists_the_flags(entry, capsys):
  argv = [f'--config={SMOKE}', '--help'] if entry in ('main', 'bench') else ['--help']
  code, out, _ = _run(entry, argv, capsys)
  assert code == 0
  assert f'--{OWN_FLAG[entry][0]}' in out and '--[no]verbose' in out


@pytest.mark.parametrize('entry', sorted(ENTRY_POINTS))
def test_a_misspelt_flag_is_one_line_with_the_suggestion(entry, capsys):
  right, wrong = OWN_FLAG[entry]
  code, _, err = _run(entry, [f'--{wrong}=x'], capsys)
  assert code == 2
  assert err.strip().count('\n') == 0
  assert f"Unknown command line flag '{wrong}'. Did you mean: {right} ?" in err


@pytest.mark.parametrize('entry', ['main', 'bench'])
def test_a_misspelt_config_key_is_one_line_with_the_suggestion(entry, capsys):
  code, _, err = _run(entry, [f'--config={SMOKE}', '--config.model.hiden_size=64'], capsys)
  assert code == 2
  assert err.strip().count('\n') == 0
  assert '--config.model.hiden_size: no such config key (did you mean model.hidden_size?)' in err


@pytest.mark.parametrize(
  'argv, code, message',
  [
    (['--config.model.hidden_size=abc'], 2, 'hidden_size'),
    (['--config.model.hidden_size=0'], 1, 'model.hidden_size=0: expected an integer >= 1'),
    (['--config.training.lr_schedule=step'], 1, "training.lr_schedule='step'"),
    (['--no_such_flag=1'], 2, "Unknown command line flag 'no_such_flag'"),
    (['stray'], 2, 'unexpected arguments: stray'),
  ],
)
def test_bad_flags_and_values_are_one_line(argv, code, message, capsys):
  got, _, err = _run('main', [f'--config={SMOKE}', *argv], capsys)
  assert got == code
  assert err.strip().count('\n') == 0, err
  assert message in err


def test_a_missing_config_file_is_one_line(capsys):
  code, _, err = _run('main', ['--config=configs/no_such_config.py'], capsys)
  assert code == 2 and err.strip().count('\n') == 0 and 'no_such_config.py' in err


@pytest.mark.parametrize(
  'argv, code, message',
  [
    ([], 2, 'expected one mode, l2t, t2l, unconditional'),
    (['l2t', '--out', 'o', '--latents', 'x'], 2, '--workdir is required'),
    (['l2t', '--workdir', 'w', '--out', 'o', '--texts', 't'], 2, '--texts is for t2l only, not l2t'),
    (['l2t', '--workdir', 'w', '--out', 'o'], 2, 'l2t takes --latents'),
    (['t2l', '--workdir', '/no/such/run', '--out', 'o', '--texts', 't'], 1, '/no/such/run'),
  ],
)
def test_sample_checks_its_arguments_first(argv, code, message, capsys):
  got, _, err = _run('sample', argv, capsys)
  assert got == code and err.strip().count('\n') == 0 and message in err, err


@pytest.mark.parametrize(
  'argv, code, message',
  [
    ([], 2, 'expected one mode, text or sts; got none'),
    (['text'], 2, '--workdir is required'),
    (['text', '--workdir', '/no/such/run'], 1, '--workdir /no/such/run: no such directory'),
    (['text', '--workdir', '.', '--split', 'test'], 2, 'value should be one of <val|train>'),
    (['text', '--workdir', '.'], 2, '--workdir . is not a training workdir'),
    (['sts', '--workdir', '.'], 2, 'sts needs --pairs FILE.tsv'),
    (['text', '--workdir', '.', '--pairs', 'p.tsv'], 2, '--pairs applies to sts, not text'),
    (['text', '--workdir', '.', '--max_batches', '-1'], 2, '--max_batches=-1: expected an integer >= 0'),
  ],
)
def test_evaluate_checks_its_arguments_first(argv, code, message, capsys):
  got, _, err = _run('evaluate', argv, capsys)
  assert got == code and err.strip().count('\n') == 0 and message in err, err


@pytest.mark.parametrize('entry', ['main', 'bench'])
def test_help_config_lists_every_config_key_with_its_default_and_help(entry, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no config file is read: the listing needs none
  code, out, _ = _run(entry, ['--help_config'], capsys)
  assert code == 0
  listed = [line.split('=')[0].strip() for line in out.splitlines() if line.startswith('  ') and line[2] != ' ']
  assert listed == list(config_lib.KEYS)
  assert '  model.hidden_size=256\n      Width of the text and latent streams.\n' in out
  assert "  model.dtype='float32' [float32 | bfloat16]\n" in out


def test_help_lists_help_config_only_where_there_is_a_config(capsys):
  assert '--[no]help_config' in _run('main', [f'--config={SMOKE}', '--help'], capsys)[1]
  assert 'help_config' not in _run('plot', ['--help'], capsys)[1]
  code, _, err = _run('plot', ['--help_config'], capsys)
  assert code == 2 and "Unknown command line flag 'help_config'" in err


def test_python_dash_m_help_exits_zero():
  result = subprocess.run(
    [sys.executable, '-m', 'lgdlm_jax.main', '--help'], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('Train the cycle_vae objective: python -m lgdlm_jax.main')


@pytest.mark.parametrize(
  'entry, argv, message',
  [
    ('prepare_data', ['check', '/no/such'], '/no/such: not a directory'),
    (
      'prepare_data',
      ['pack', '--from', '/no/such', '--out', 'o'],
      "latent_dir '/no/such/latents/train' is not a directory",
    ),
    ('plot', ['/no/such', '--out', 'o.png'], '/no/such/training_log.jsonl: no such file'),
    ('convert', ['--input', '/no/such.pt', '--output', 'o'], '/no/such.pt does not exist'),
    ('sample', ['t2l', '--workdir', __file__, '--out', 'o', '--texts', 't'], 'is neither a training workdir nor'),
  ],
)
def test_a_missing_or_wrong_path_is_one_line(entry, argv, message, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  code, _, err = _run(entry, argv, capsys)
  assert code != 0 and err.strip().count('\n') == 0 and message in err, err
  assert os.listdir(tmp_path) == []  # nothing written
