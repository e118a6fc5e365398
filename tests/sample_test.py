"""The sampling CLI and the workdir loader, on a checkpoint written the way loop.run writes it."""

import os

import chex
import jax
import numpy as np

from lgdlm_jax import data
from lgdlm_jax import model as model_lib
from lgdlm_jax import sample
from lgdlm_jax.checkpoints import workdirs
from lgdlm_jax.evaluation import samplers
from tests.helpers.workdirs import LATENT_DIM
from tests.helpers.workdirs import SEQ_LEN
from tests.helpers.workdirs import TEXTS
from tests.helpers.workdirs import make_workdir


def test_sampling_cli_round_trip(tmp_path):
  workdir = str(tmp_path / 'run')
  config, state = make_workdir(workdir)
  saved = workdirs.read(workdir, workdirs.load_config(workdir).model)
  assert saved.step == 3
  chex.assert_trees_all_equal(jax.device_get(saved.params), jax.device_get(state.params))

  # l2t: 5 latents in one [N,D] file, batches of 2 (the last one padded).
  latents_path = str(tmp_path / 'latents.npy')
  np.save(latents_path, np.random.default_rng(0).standard_normal((5, LATENT_DIM)).astype(np.float32))
  out = str(tmp_path / 'l2t')
  sample.main(
    ['l2t', '--workdir', workdir, '--latents', latents_path, '--out', out, '--steps', '3', '--batch_size', '2']
  )
  spec = data.SampleSpec(SEQ_LEN, LATENT_DIM, config.model.vocab_size)
  token_files = sorted(os.listdir(os.path.join(out, 'tokens')))
  assert token_files == [f'{i:06d}_tokens.npz' for i in range(5)]
  with np.load(os.path.join(out, 'tokens', token_files[0])) as arrays:
    assert arrays['input_ids'].shape == (SEQ_LEN,)
    assert not (arrays['input_ids'] == config.tokenizer.mask_token_id).any()
  with open(os.path.join(out, 'texts.txt')) as f:
    assert [line.split('\t')[0] for line in f] == [f'{i:06d}' for i in range(5)]

  # t2l from the sampled token files and from a text file, written in the training layout.
  texts_path = tmp_path / 'texts.txt'
  texts_path.write_text('\n'.join(TEXTS) + '\n\n')
  for source, num in ((os.path.join(out, 'tokens'), 5), (str(texts_path), len(TEXTS))):
    t2l_out = str(tmp_path / f't2l_{num}')
    sample.main(['t2l', '--workdir', workdir, '--texts', source, '--out', t2l_out, '--steps', '2'])
    names = [f'{i:06d}' for i in range(num)]
    assert sorted(os.listdir(os.path.join(t2l_out, 'latents'))) == [f'{n}.npy' for n in names]
    for name in names:  # paired with the l2t token files so the loader validates each latent
      data.read_sample(
        data.SampleFiles(
          name, os.path.join(out, 'tokens', f'{name}_tokens.npz'), os.path.join(t2l_out, 'latents', f'{name}.npy')
        ),
        spec,
      )


def test_l2t_decodes_the_length_head_prediction_or_the_length_flag(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  config, _ = make_workdir(workdir, length_head=True)
  params = workdirs.read(workdir, workdirs.load_config(workdir).model).params
  latents = np.random.default_rng(0).standard_normal((1, LATENT_DIM)).astype(np.float32)
  model = model_lib.MultimodalMMDiT(config.model)
  predicted = int(samplers.predicted_lengths(params, latents, model=model)[0])
  latents_path = str(tmp_path / 'latents.npy')
  np.save(latents_path, latents)
  for flags, expected in (
    ([], predicted),
    (['--length', str(SEQ_LEN - predicted % 2 - 1)], SEQ_LEN - predicted % 2 - 1),
  ):
    out = str(tmp_path / f'l2t_{len(flags)}')
    sample.main(['l2t', '--workdir', workdir, '--latents', latents_path, '--out', out, '--steps', '2', *flags])
    with np.load(os.path.join(out, 'tokens', '000000_tokens.npz')) as arrays:
      assert int(np.sum(arrays['input_ids'] != config.tokenizer.pad_token_id)) == expected
  bad = ['l2t', '--workdir', workdir, '--latents', latents_path, '--out', str(tmp_path / 'bad'), '--length']
  assert sample.main(bad + [str(SEQ_LEN + 1)]) != 0
  assert f'--length {SEQ_LEN + 1}' in capsys.readouterr().err
