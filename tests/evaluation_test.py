"""Evaluation metrics: exactly 1 for an oracle model, its controls at their known values, true equal to
shuffled for a model blind to the latent, in range for a real one; the console line; decoded example lines."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.evaluation import examples as eval_examples
from lgdlm_jax.evaluation import metrics as eval_metrics
from lgdlm_jax.objective import diffusion

VOCAB, MASK_ID, PAD_ID, SEQ_LEN, LATENT_DIM, BATCH = 30, 3, 0, 6, 8, 4
METRICS = ('l2t_onepass_acc', 'l2t_sample_acc', 't2l_cosine', 'cycle_t2l2t_acc', 'cycle_l2t2l_cosine')
CONTROLS = ('l2t_onepass_acc_shuffled', 't2l_mean_latent_cosine', 't2l_norm')


def tiny_config():
  config = config_lib.default_config()
  config.model.update(
    vocab_size=VOCAB,
    hidden_size=32,
    n_blocks=1,
    cond_dim=32,
    max_seq_len=SEQ_LEN,
    latent_dim=LATENT_DIM,
    num_residual_streams=1,
  )
  config.tokenizer.update(vocab_size=VOCAB, mask_token_id=MASK_ID, pad_token_id=PAD_ID)
  config.training.update(eval_l2t_steps=3, eval_t2l_steps=4)
  return config


def make_batch():
  rng = np.random.default_rng(0)
  lengths = np.array([6, 4, 2, 5])
  mask = np.arange(SEQ_LEN)[None] < lengths[:, None]
  ids = np.where(mask, rng.integers(5, VOCAB, (BATCH, SEQ_LEN)), PAD_ID).astype(np.int32)
  latent = rng.standard_normal((BATCH, LATENT_DIM)).astype(np.float32)
  return {'input_ids': ids, 'attention_mask': mask, 'latent': latent}


class Oracle(nn.Module):
  """Knows the batch: L2T answers the true ids of the row whose latent is nearest (and a wrong id
  on padding), T2L answers the exact noise of the row whose text matches on its true positions."""

  ids_BxS: np.ndarray
  mask_BxS: np.ndarray
  x0_BxD: np.ndarray

  @nn.compact
  def __call__(self, tokens, latents, text_t, latent_t, attention_mask=None, deterministic=True):
    ids, mask, x0 = (jnp.asarray(a) for a in (self.ids_BxS, self.mask_BxS, self.x0_BxD))
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    by_latent_N = jnp.argmax(unit(latents) @ unit(x0).T, axis=-1)
    by_text_N = jnp.argmax(jnp.all((tokens[:, None, :] == ids[None]) | ~mask[None], axis=-1), axis=-1)
    answer_NxS = jnp.where(mask[by_latent_N], ids[by_latent_N], PAD_ID + 1)
    logits = 20.0 * jax.nn.one_hot(answer_NxS, VOCAB)
    sqrt_abar, sqrt_one_minus_abar = diffusion.schedule_values(diffusion.make_schedule('cosine'), latent_t)
    x0_N = x0[by_text_N]
    eps = (latents - sqrt_abar[:, None] * x0_N) / sqrt_one_minus_abar[:, None]
    return logits, eps[:, None, :]


def test_an_oracle_scores_one_everywhere_and_decodes_the_reference(tmp_path):
  config, batch = tiny_config(), make_batch()
  model = Oracle(batch['input_ids'], batch['attention_mask'], batch['latent'])
  metrics = jax.jit(functools.partial(eval_metrics.evaluate_batch, model=model, config=config))(
    {}, batch, jax.random.key(0)
  )
  assert set(metrics) == set(METRICS + CONTROLS)
  for name in METRICS:
    np.testing.assert_allclose(metrics[name], 1.0, atol=1e-4, err_msg=name)
  # Controls: given row i-1's latent the oracle answers row i-1's text; the mean latent is each
  # row's mean over the other rows; T2L samples are the true latents, so their norm is the data's.
  ids, mask, x0 = batch['input_ids'], batch['attention_mask'], batch['latent']
  answer = np.where(np.roll(mask, 1, axis=0), np.roll(ids, 1, axis=0), PAD_ID + 1)
  np.testing.assert_allclose(
    metrics['l2t_onepass_acc_shuffled'], np.sum((answer == ids) & mask) / mask.sum(), atol=1e-6
  )
  others = (x0.sum(0, keepdims=True) - x0) / (BATCH - 1)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(metrics['t2l_mean_latent_cosine'], np.mean(np.sum(unit(others) * unit(x0), -1)), atol=1e-5)
  np.testing.assert_allclose(metrics['t2l_norm'], np.mean(np.linalg.norm(x0, axis=-1)), rtol=1e-4)
  assert metrics['l2t_onepass_acc_shuffled'] < 0.5 and metrics['t2l_mean_latent_cosine'] < 0.9

  # Without a tokenizer the lines show the ids of each row's true positions, padding excluded.
  lines = eval_examples.decoded_examples({}, batch, jax.random.key(0), model=model, config=config, num_examples=2)
  row = ' '.join(str(i) for i in batch['input_ids'][1][:4])
  assert lines[4:] == ['example 1:', f'  reference: {row}', f'   one pass: {row}', f'    sampled: {row}']
  vocab = {'[PAD]': PAD_ID, '[UNK]': 1, 'x2': 2, '[MASK]': MASK_ID, 'x4': 4} | {f'w{i}': i for i in range(5, VOCAB)}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
  tokenizer.add_special_tokens(['[PAD]', '[UNK]', '[MASK]'])
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tokenizer.save(str(tmp_path / 'tokenizer.json'))
  config.tokenizer.json_file = str(tmp_path / 'tokenizer.json')
  lines = eval_examples.decoded_examples({}, batch, jax.random.key(0), model=model, config=config, num_examples=2)
  assert lines[5] == '  reference: ' + ' '.join(f'w{i}' for i in batch['input_ids'][1][:4])


class LatentBlind(nn.Module):
  """L2T answers the same text (the ids of row 0) whatever the latent; T2L answers zero noise."""

  ids_BxS: np.ndarray

  @nn.compact
  def __call__(self, tokens, latents, text_t, latent_t, attention_mask=None, deterministic=True):
    logits = 20.0 * jax.nn.one_hot(jnp.broadcast_to(jnp.asarray(self.ids_BxS[0]), tokens.shape), VOCAB)
    return logits, jnp.zeros_like(latents)[:, None, :]


def test_a_model_blind_to_the_latent_scores_the_same_with_shuffled_latents():
  config, batch = tiny_config(), make_batch()
  metrics = jax.device_get(
    jax.jit(functools.partial(eval_metrics.evaluate_batch, model=LatentBlind(batch['input_ids']), config=config))(
      {}, batch, jax.random.key(0)
    )
  )
  assert metrics['l2t_onepass_acc'] > 0.2  # row 0's text is right on row 0: not a trivial zero
  assert metrics['l2t_onepass_acc'] == metrics['l2t_onepass_acc_shuffled']


def test_the_console_line_shows_each_metric_beside_its_control():
  val = dict(
    loss=2.5,
    l2t_onepass_acc=0.4,
    l2t_onepass_acc_shuffled=0.2,
    t2l_cosine=0.31,
    t2l_mean_latent_cosine=0.25,
    t2l_norm=1.02,
    cycle_t2l2t_acc=0.1,
  )
  line = eval_examples.eval_line(200, val)
  assert line == (
    'eval step 200: val loss 2.5000 | L2T acc 0.400 (shuffled latents 0.200) | '
    'T2L cosine 0.310 (mean latent 0.250, sample norm 1.02)'
  )
  assert eval_examples.eval_line(5, dict(loss=1.0)) == 'eval step 5: val loss 1.0000'


def test_the_console_shows_the_suites_scores_beside_their_controls_when_computed():
  suite = dict(
    l2t_onepass_acc=0.4,
    l2t_onepass_acc_shuffled=0.2,
    l2t_onepass_token_f1=0.25,
    l2t_onepass_distinct_2=0.6,
    t2l_recall_at_1=0.5,
  )
  suite.update(l2t_onepass_bleu=1.5, l2t_onepass_reencode_cosine=0.41, l2t_onepass_reencode_cosine_shuffled=0.17)
  suite.update(l2t_sample_acc=0.15, l2t_sample_token_f1=0.07, l2t_sample_distinct_2=0.52, t2l_recall_at_5=0.75)
  lines = eval_examples.eval_line(9, dict(loss=1.0, **suite)).split('\n')
  assert lines == [
    'eval step 9: val loss 1.0000 | L2T acc 0.400 (shuffled latents 0.200)',
    '  one pass: acc 0.400, BLEU 1.50, token F1 0.250, re-encoded cosine 0.410 (shuffled latents 0.170), '
    'distinct-2 0.600',
    '  sampled: acc 0.150, token F1 0.070, distinct-2 0.520',  # no BLEU, no encoder: left out
    '  T2L recall@1 0.500, @5 0.750',
  ]


def test_real_model_metrics_are_in_range():
  config, batch = tiny_config(), make_batch()
  model = model_lib.MultimodalMMDiT(config.model)
  params = model.init(jax.random.key(0), jnp.zeros((1, SEQ_LEN), jnp.int32), jnp.zeros((1, LATENT_DIM)))['params']
  metrics = jax.device_get(
    jax.jit(functools.partial(eval_metrics.evaluate_batch, model=model, config=config))(
      params, batch, jax.random.key(0)
    )
  )
  for name in METRICS + CONTROLS[:2]:
    low = 0.0 if 'acc' in name else -1.0
    assert low - 1e-6 <= float(metrics[name]) <= 1.0 + 1e-6, (name, metrics[name])


@pytest.mark.slow  # a whole run: compiles the train step, both evaluations and the decoders (2 min of CPU)
def test_the_run_prints_each_evaluation_and_decoded_sentences_of_both_splits(tmp_path, capsys):
  from lgdlm_jax.training import loop  # pylint: disable=g-import-not-at-top
  from lgdlm_jax.training import metrics_log  # pylint: disable=g-import-not-at-top
  from tests.helpers.runs import tiny_config as tiny_run_config  # pylint: disable=g-import-not-at-top

  config = tiny_run_config(
    **{
      'training.num_train_steps': 2,
      'training.eval_every': 2,
      'training.save_every': 0,
      'training.eval_batches': 1,
      'training.eval_l2t_steps': 2,
      'training.eval_t2l_steps': 2,
      'training.print_examples': 1,
    }
  )
  loop.run(config, str(tmp_path))
  lines = capsys.readouterr().out.splitlines()
  evals = [line for line in lines if line.startswith('eval step ')]
  assert [line.split(':')[0] for line in evals] == ['eval step 0', 'eval step 2']
  assert all('shuffled latents' in line and 'mean latent' in line for line in evals)
  assert lines.index('validation example 0:') < lines.index('training example 0:')
  assert lines[-1] == f'Training log: {tmp_path}/training_log.jsonl; plot: {tmp_path}/{metrics_log.PLOT_FILE}'
