"""The samplers' options: top-k / top-p / min-p, T2L guidance, the T2L start per mode, the
unconditional samplers, and the sampling command's flags and results.json."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgdlm_jax import sample
from lgdlm_jax.errors import ConfigError
from lgdlm_jax.evaluation import filters
from lgdlm_jax.evaluation import joint_sampler
from lgdlm_jax.evaluation import samplers
from tests.helpers.models import VOCAB
from tests.helpers.models import sampler_config
from tests.helpers.workdirs import LATENT_DIM
from tests.helpers.workdirs import SEQ_LEN
from tests.helpers.workdirs import make_workdir

PROBS = np.array([0.5, 0.2, 0.15, 0.1, 0.05])


def kept_distribution(**options):
  """The sampling distribution that remains of PROBS after the filters."""
  logits = jnp.log(jnp.asarray(PROBS))[None]
  return np.asarray(jax.nn.softmax(filters.filter_logits(logits, **options), axis=-1))[0]


@pytest.mark.parametrize(
  'options,kept',
  [
    (dict(), [0, 1, 2, 3, 4]),
    (dict(top_k=2), [0, 1]),
    (dict(top_k=1), [0]),
    (dict(top_p=0.7), [0, 1]),  # 0.5 < 0.7 so the second is kept; 0.7 is not below 0.7
    (dict(top_p=0.75), [0, 1, 2]),
    (dict(top_p=0.1), [0]),
    (dict(min_p=0.25), [0, 1, 2]),  # threshold 0.125
    (dict(min_p=0.5), [0]),  # threshold 0.25
    # top-k 3 leaves [0.5, 0.2, 0.15] / 0.85 = [0.588, 0.235, 0.176]: top-p 0.8 then keeps two.
    (dict(top_k=3, top_p=0.8), [0, 1]),
    (dict(top_k=4, min_p=0.3), [0, 1, 2]),
  ],
)
def test_filters_keep_the_hand_computed_set_renormalised(options, kept):
  expected = np.zeros_like(PROBS)
  expected[kept] = PROBS[kept] / PROBS[kept].sum()
  np.testing.assert_allclose(kept_distribution(**options), expected, rtol=1e-6)


def test_top_k_keeps_every_token_tied_with_the_kth():
  logits = jnp.asarray([[1.0, 3.0, 2.0, 2.0, 0.0]])
  kept = np.isfinite(np.asarray(filters.filter_logits(logits, top_k=2)))
  np.testing.assert_array_equal(kept, [[False, True, True, True, False]])


@pytest.mark.parametrize(
  'options,message', [(dict(top_k=-1), 'top_k=-1'), (dict(top_p=0.0), 'top_p=0.0'), (dict(min_p=1.5), 'min_p=1.5')]
)
def test_filters_refuse_values_out_of_range(options, message):
  with pytest.raises(ConfigError, match=message):
    filters.filter_logits(jnp.zeros((1, 4)), **options)


class GuidanceStub(nn.Module):
  """An x0-parameterised T2L stub: the clean latent CONDITIONAL where any text is visible, else NULL."""

  @nn.compact
  def __call__(self, tokens, latents, text_t, latent_t, attention_mask=None, deterministic=True):
    visible_B = jnp.ones(tokens.shape[0], bool) if attention_mask is None else jnp.any(attention_mask, axis=1)
    output = jnp.where(visible_B[:, None], CONDITIONAL, NULL)
    return jnp.zeros(tokens.shape + (VOCAB,)), output[:, None, :]


CONDITIONAL = jnp.arange(8, dtype=jnp.float32) / 8
NULL = -jnp.ones(8, jnp.float32)


@pytest.mark.parametrize('scale', [1.0, 3.0, 0.0])
def test_t2l_guidance_combines_conditional_and_null_outputs(scale):
  config = sampler_config(latent_parameterization='x0')
  sample_t2l = functools.partial(samplers.sample_t2l, model=GuidanceStub(), config=config, steps=3)
  tokens = jnp.full((2, 12), 5, jnp.int32)
  latents = sample_t2l({}, tokens, jnp.ones((2, 12), bool), jax.random.key(0), guidance_scale=scale)
  expected = NULL + scale * (CONDITIONAL - NULL)
  np.testing.assert_allclose(latents, np.broadcast_to(expected, (2, 8)), atol=1e-4)


@pytest.mark.parametrize(
  'loss_type,start', [('cycle_vae', 0.98), ('t2l', 1.0), ('unconditional', 1.0), ('sequential', 1.0)]
)
def test_t2l_starts_where_each_mode_trained(loss_type, start):
  config = sampler_config()
  config.loss.loss_type = loss_type
  assert samplers.t2l_start_time(config) == pytest.approx(start)


def test_t2l_is_refused_for_a_model_trained_in_l2t_mode_only():
  config = sampler_config()
  config.loss.loss_type = 'l2t'
  with pytest.raises(ConfigError, match="loss_type='l2t'"):
    samplers.t2l_start_time(config)


@pytest.fixture(scope='module')
def tiny_model():
  from lgdlm_jax import model as model_lib

  config = sampler_config()
  config.loss.loss_type = 'unconditional'
  model = model_lib.MultimodalMMDiT(config.model)
  params = model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32), jnp.zeros((1, 8)))['params']
  return config, model, params


@pytest.mark.parametrize('two_stage', [False, True])
def test_unconditional_samplers_are_fully_decoded_and_deterministic_for_a_seed(tiny_model, two_stage):
  config, model, params = tiny_model
  common = dict(model=model, config=config, batch=3, seq_len=12)
  if two_stage:
    draw = functools.partial(joint_sampler.sample_two_stage, text_steps=4, latent_steps=3, **common)
  else:
    draw = functools.partial(joint_sampler.sample_joint, steps=4, **common)
  draw = jax.jit(draw)
  (tokens, latents), (again, _), (other, _) = (draw(params, jax.random.key(s)) for s in (1, 1, 2))
  assert tokens.shape == (3, 12) and latents.shape == (3, 8)
  np.testing.assert_array_equal(tokens, again)
  assert not np.array_equal(tokens, other)
  assert not (np.asarray(tokens) == config.tokenizer.mask_token_id).any()
  assert np.isfinite(np.asarray(latents)).all()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('sampling') / 'run')
  make_workdir(path)
  return path


def results(out):
  with open(os.path.join(out, 'results.json')) as f:
    return json.load(f)


def test_unconditional_command_writes_texts_latents_and_results(workdir, tmp_path):
  out = str(tmp_path / 'unconditional')
  argv = ['unconditional', '--workdir', workdir, '--out', out, '--num_samples', '3', '--batch_size', '2']
  assert sample.main(argv + ['--steps', '3', '--top_k', '5']) == 0
  report = results(out)
  assert report['mode'] == 'unconditional' and report['settings']['top_k'] == 5
  assert [s['name'] for s in report['samples']] == ['000000', '000001', '000002']
  for entry in report['samples']:
    assert isinstance(entry['text'], str)
    assert np.load(os.path.join(out, entry['latent_file'])).shape == (LATENT_DIM,)
    with np.load(os.path.join(out, entry['tokens_file'])) as arrays:
      assert arrays['input_ids'].shape == (SEQ_LEN,)


def test_t2l_from_a_prompt_with_guidance_warns_and_writes_results(workdir, tmp_path, caplog):
  out = str(tmp_path / 't2l')
  argv = ['t2l', '--workdir', workdir, '--out', out, '--text_prompt', 'Jesus wept.', '--num_samples', '2']
  assert sample.main(argv + ['--steps', '2', '--guidance_scale', '2', '--max_length', '4']) == 0
  assert 'loss.condition_dropout=0' in caplog.text
  report = results(out)
  assert report['settings']['guidance_scale'] == 2.0 and report['settings']['max_length'] == 4
  assert [s['text'] for s in report['samples']] == ['Jesus wept.'] * 2
  first, second = (np.load(os.path.join(out, s['latent_file'])) for s in report['samples'])
  assert not np.array_equal(first, second)  # one prompt, two noise draws


@pytest.mark.parametrize(
  'argv,message',
  [
    (['l2t', '--latents', 'x.npy', '--guidance_scale', '2'], '--guidance_scale is for t2l only, not l2t'),
    (['t2l', '--texts', 'x.txt', '--top_p', '0.9'], '--top_p is for l2t only, not t2l'),
    (['t2l', '--texts', 'x.txt', '--text_prompt', 'hi'], 't2l takes --texts or --text_prompt (one of them)'),
    (['unconditional', '--num_samples', '2', '--top_p', '2'], '--top_p=2.0: must be in (0, 1]'),
    (['unconditional'], 'unconditional takes --num_samples N'),
    (['t2l', '--text_prompt', 'hi', '--max_length', '99'], '--max_length=99: must be in 1..model.max_seq_len=8'),
  ],
)
def test_sampling_flags_that_do_not_apply_are_one_line_errors(argv, message, workdir, tmp_path, capsys):
  code = sample.main(argv + ['--workdir', workdir, '--out', str(tmp_path / 'out')])
  err = capsys.readouterr().err.strip()
  assert code != 0 and message in err and '\n' not in err, err
