"""A checkpoint whose pickle carries code is refused by every input path, and the code never runs.

Payloads: a `__reduce__` that calls os.system, and one that calls builtins.eval, each placed at the
top level of the file, inside the trainer's `cfg`, and inside a cycle-trainer run directory's
latest.pt. Paths: the converter's --input (file, run directory, latentDLM run directory) and the
training config's init_from. Each payload would create a marker file; it must never appear, and the
refusal must name the global. With --unsafe-pickle the same file does run it (so the test can fail).
"""

import os

import pytest
import torch

import convert_torch_weights
from lgdlm_jax import errors
from lgdlm_jax.reference import model as reference_model
from lgdlm_jax.training import loop
from tests.helpers import models
from tests.helpers import runs


class SystemCall:
  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


class Eval:
  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return eval, (f'open({self.marker!r}, "w").close()',)


PAYLOADS = {'os.system': (SystemCall, 'posix.system'), 'builtins.eval': (Eval, 'builtins.eval')}


def _state_dict(config):
  return reference_model.ReferenceMultimodalMMDiT(config).state_dict()


def _checkpoint(config, where: str, payload) -> dict:
  checkpoint = {'model_state_dict': _state_dict(config), 'step': 4, 'cfg': {'model': {'dropout': 0.0}}}
  if where == 'top level':
    checkpoint['hook'] = payload
  else:  # inside cfg, as a value of the trainer's config
    checkpoint['cfg']['model']['dropout'] = payload
  return checkpoint


def _write(tmp_path, layout: str, checkpoint: dict) -> str:
  """The checkpoint in one of the reference's layouts; returns the path a user would give."""
  if layout == 'file':
    path = tmp_path / 'checkpoint.pt'
  elif layout == 'cycle run directory':
    path = tmp_path / 'run' / 'checkpoints' / 'latest.pt'
  else:  # latentDLM's run directory
    path = tmp_path / 'run' / 'latest' / 'checkpoint.pt'
  path.parent.mkdir(parents=True, exist_ok=True)
  torch.save(checkpoint, path)
  return str(tmp_path / 'checkpoint.pt' if layout == 'file' else tmp_path / 'run')


def _assert_refused(message: str, global_name: str, marker: str) -> None:
  assert global_name in message and '--unsafe-pickle' in message, message
  assert len(message.strip().splitlines()) == 1, message
  assert not os.path.exists(marker), 'the payload ran'


@pytest.mark.parametrize('payload', sorted(PAYLOADS))
@pytest.mark.parametrize('where', ['top level', 'inside cfg'])
@pytest.mark.parametrize('layout', ['file', 'cycle run directory', 'latentDLM run directory'])
def test_converter_refuses_code_and_does_not_run_it(tmp_path, capsys, payload, where, layout):
  make, global_name = PAYLOADS[payload]
  marker = str(tmp_path / 'MARKER')
  source = _write(tmp_path, layout, _checkpoint(models.tiny_config(), where, make(marker)))
  code = convert_torch_weights.main(['--input', source, '--output', str(tmp_path / 'out')])
  _, err = capsys.readouterr()
  assert code == 1
  _assert_refused(err, global_name, marker)
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('payload', sorted(PAYLOADS))
@pytest.mark.parametrize('layout', ['file', 'cycle run directory'])
def test_init_from_refuses_code_before_any_work(tmp_path, payload, layout):
  make, global_name = PAYLOADS[payload]
  marker = str(tmp_path / 'MARKER')
  config = runs.tiny_config()
  source = _write(tmp_path, layout, _checkpoint(config.model, 'inside cfg', make(marker)))
  config.init_from = source
  with pytest.raises(errors.InputError) as raised:
    loop.run(config, str(tmp_path / 'workdir'))
  assert str(raised.value).startswith(f'init_from={source}: ')
  _assert_refused(str(raised.value), global_name, marker)
  assert not os.path.exists(tmp_path / 'workdir')  # refused before any work


def test_unsafe_pickle_does_run_the_payload(tmp_path, capsys):
  """The payloads above are real: with --unsafe-pickle the converter unpickles, and the code runs."""
  marker = str(tmp_path / 'MARKER')
  source = _write(tmp_path, 'file', _checkpoint(models.tiny_config(), 'top level', SystemCall(marker)))
  code = convert_torch_weights.main(['--input', source, '--output', str(tmp_path / 'out'), '--unsafe-pickle'])
  capsys.readouterr()
  assert code == 0 and os.path.exists(marker)
