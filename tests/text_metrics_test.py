"""lgdlm_jax.evaluation.text_metrics against values worked out by hand on tiny inputs."""

import numpy as np
import pytest

from lgdlm_jax.evaluation import text_metrics


def test_token_f1():
  # common words: the (1), cat (1) -> precision 2/3, recall 2/3
  assert text_metrics.token_f1('the cat sat', 'the cat the') == pytest.approx(2 / 3)
  assert text_metrics.token_f1('The Cat', 'the cat') == 1.0
  assert text_metrics.token_f1('a b', 'c') == 0.0
  assert text_metrics.token_f1('', '') == 1.0 and text_metrics.token_f1('a', '') == 0.0
  # 1 common of 4 predicted, 1 of 1 expected: p 1/4, r 1 -> 2 * 1/4 / (5/4) = 0.4
  assert text_metrics.token_f1('a b c d', 'a') == pytest.approx(0.4)


def test_exact_match():
  assert text_metrics.exact_match('The  cat', 'the cat') == 1.0
  assert text_metrics.exact_match('the cat', 'the cat sat') == 0.0


def test_distinct_n():
  texts = ['a a b', 'a b']  # unigrams a a b a b: 2 unique of 5; bigrams (a a) (a b) (a b): 2 of 3
  assert text_metrics.distinct_n(texts, 1) == pytest.approx(0.4)
  assert text_metrics.distinct_n(texts, 2) == pytest.approx(2 / 3)
  assert text_metrics.distinct_n(['a'], 2) == 0.0


def test_bleu():
  pytest.importorskip('sacrebleu', reason='BLEU needs the eval extra')
  assert text_metrics.bleu(['the cat sat on the mat'], ['the cat sat on the mat']) == pytest.approx(100.0)
  # n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity penalty): 100 * 0.2 ** (1/4)
  assert text_metrics.bleu(['a b c d e'], ['a b c d f']) == pytest.approx(100 * 0.2**0.25, abs=1e-3)


def test_mean_cosine_and_recall_at_k():
  x, y = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[1.0, 1.0], [0.0, -1.0]])
  assert text_metrics.mean_cosine(x, y) == pytest.approx((2**-0.5 - 1) / 2)
  targets = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  # row 0 is nearest its own target; row 1 has target 0 nearer than its own; row 2 (own cosine 0) has target 1 nearer
  predicted = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
  assert text_metrics.recall_at_k(predicted, targets, 1) == pytest.approx(1 / 3)
  assert text_metrics.recall_at_k(predicted, targets, 2) == 1.0


def test_round_trip_with_a_stand_in_encoder():
  vectors = {'a': [1.0, 0.0], 'b': [1.0, 1.0]}
  encoder = lambda texts: np.array([vectors[t] for t in texts])  # noqa: E731
  latents = np.array([[1.0, 0.0], [0.0, 1.0]])
  own, shuffled = text_metrics.round_trip(encoder, ['a', 'b'], latents)
  assert own == pytest.approx((1 + 2**-0.5) / 2)  # cos(a, z0) = 1, cos(b, z1) = 1/sqrt2
  assert shuffled == pytest.approx((0 + 2**-0.5) / 2)  # against z1 and z0: 0 and 1/sqrt2
  with pytest.raises(ValueError, match=r'the encoder gave \(2, 2\) for 2 texts; the latents are \(2, 3\)'):
    text_metrics.round_trip(encoder, ['a', 'b'], np.ones((2, 3)))
