"""How decoded text and sampled latents are scored, as pure host-side functions of plain arrays and strings.

Text metrics compare each decoded text with its reference text, word by word (lower-cased,
split on white space, as the tokenizer's decoder writes words):
  token_f1        SQuAD's F1 of the two bags of words (1 when both are empty), averaged over rows.
  exact_match     1 when the two word sequences are equal, averaged over rows.
  distinct_n      unique n-grams / all n-grams over every decoded text together (Li et al., 2016):
                  low values mean the decoder repeats itself ("the the the").
  bleu            corpus BLEU (sacrebleu's defaults: 13a tokenisation, 4-grams), 0 to 100.
Latent metrics (rows of [N, D] arrays, cosines of the directions):
  mean_cosine     mean over rows of cos(x_i, y_i).
  recall_at_k     the fraction of rows whose own target is among the k targets nearest (by cosine)
                  to its prediction, among all the rows' targets (ties count in the row's favour).
  round_trip      the vec2text measure: cos(encoder(decoded text_i), latent_i), and its control
                  cos(encoder(decoded text_i), latent_j) with j the row before i (the latents
                  rolled by one): what the decoded text carries of its own latent beyond what any
                  latent of the data shares.
"""

from collections import Counter
from collections.abc import Callable, Sequence
import importlib.util

import numpy as np

# texts -> float [N, D] (lgdlm_jax.data.text_dataset.Encoder)
Encoder = Callable[[list[str]], np.ndarray]


def words(text: str) -> list[str]:
  return text.lower().split()


def token_f1(prediction: str, reference: str) -> float:
  predicted, expected = words(prediction), words(reference)
  if not predicted or not expected:
    return float(predicted == expected)
  same = sum((Counter(predicted) & Counter(expected)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(predicted), same / len(expected)
  return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
  return float(words(prediction) == words(reference))


def distinct_n(texts: Sequence[str], n: int) -> float:
  grams = [tuple(w[i : i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
  import sacrebleu  # pylint: disable=g-import-not-at-top  (the `eval` extra; checked by have_bleu)

  return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def have_bleu() -> bool:
  return importlib.util.find_spec('sacrebleu') is not None


def _unit(x_NxD: np.ndarray) -> np.ndarray:
  x = np.asarray(x_NxD, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_cosine(x_NxD: np.ndarray, y_NxD: np.ndarray) -> float:
  return float(np.mean(np.sum(_unit(x_NxD) * _unit(y_NxD), axis=-1)))


def recall_at_k(predicted_NxD: np.ndarray, targets_NxD: np.ndarray, k: int) -> float:
  similarity_NxN = _unit(predicted_NxD) @ _unit(targets_NxD).T
  own_N = np.diagonal(similarity_NxN)
  rank_N = np.sum(similarity_NxN > own_N[:, None], axis=1)  # targets strictly nearer than the row's own
  return float(np.mean(rank_N < k))


def round_trip(encoder: Encoder, decoded: Sequence[str], latents_NxD: np.ndarray) -> tuple[float, float]:
  """(cosine to the rows' own latents, cosine to the latents rolled by one row) of the re-encoded texts."""
  encoded_NxD = np.asarray(encoder(list(decoded)), np.float32)
  if encoded_NxD.shape != np.shape(latents_NxD):
    raise ValueError(
      f'the encoder gave {encoded_NxD.shape} for {len(decoded)} texts; the latents are {np.shape(latents_NxD)}'
    )
  return mean_cosine(encoded_NxD, latents_NxD), mean_cosine(encoded_NxD, np.roll(latents_NxD, 1, axis=0))
