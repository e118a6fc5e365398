"""Sampling from a converted directory, as from a training workdir (python -m lgdlm_jax.sample)."""

import os

import numpy as np

from lgdlm_jax import sample
from lgdlm_jax.convert import converted
from tests.helpers import runs
from tests.helpers.params import random_params


def _converted(tmp_path, tokenizer):
  model_config = runs.tiny_config().model
  directory = str(tmp_path / 'converted')
  converted.save(
    directory,
    random_params(model_config, 0),
    model_config,  # pylint: disable=protected-access
    {'tokenizer': tokenizer},
  )
  latents = str(tmp_path / 'latents.npy')
  np.save(latents, np.random.default_rng(0).standard_normal((3, model_config.latent_dim)).astype(np.float32))
  return directory, latents


def test_l2t_samples_from_a_converted_directory(tmp_path, capsys):
  directory, latents = _converted(tmp_path, {'mask_token_id': 3, 'pad_token_id': 0})
  out = str(tmp_path / 'out')
  assert (
    sample.main(
      ['l2t', '--workdir', directory, '--latents', latents, '--out', out, '--steps', '1', '--batch_size', '3']
    )
    == 0
  )
  assert f'Loaded the converted directory {directory}' in capsys.readouterr().out
  token_files = sorted(os.listdir(os.path.join(out, 'tokens')))
  assert token_files == [f'{i:06d}_tokens.npz' for i in range(3)]
  with np.load(os.path.join(out, 'tokens', token_files[0])) as arrays:
    assert not (arrays['input_ids'] == 3).any()  # every [MASK] was decoded


def test_tokenizer_ids_the_converted_directory_lacks_are_asked_for(tmp_path, capsys):
  directory, latents = _converted(tmp_path, {})
  argv = ['l2t', '--workdir', directory, '--latents', latents, '--out', str(tmp_path / 'out'), '--steps', '1']
  assert sample.main(argv) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert 'tokenizer.mask_token_id=103 is outside the model vocabulary' in err and '--mask_token_id' in err
  assert sample.main(argv + ['--mask_token_id', '3']) == 0


def test_a_pytorch_checkpoint_is_pointed_to_the_converter(tmp_path, capsys):
  directory, latents = _converted(tmp_path, {})
  del directory
  (tmp_path / 'model.pth').write_bytes(b'')
  argv = ['l2t', '--workdir', str(tmp_path / 'model.pth'), '--latents', latents, '--out', str(tmp_path / 'out')]
  assert sample.main(argv) == 2
  assert 'convert it first' in capsys.readouterr().err
