"""The evaluation suite: a model run over batches of a split, its decodes scored as text and its
T2L samples as latents (lgdlm_jax.evaluation.text_metrics says what each score means).

    suite = TextSuite(model, config, encoder=None)          # encoder: texts -> [N, D], or None
    metrics, examples = suite.run(params, batches, rng)     # batches: host dicts of the training layout

For each batch, one jitted call gives the L2T decodes of the batch's latents (ONE pass on all-[MASK]
text, `onepass`, and the iterative sampler, `sample`: training.eval_l2t_steps rounds at
training.eval_temperature) and the DDIM T2L samples of its texts (training.eval_t2l_steps).
Names (each L2T metric for `onepass` and `sample`):
  l2t_{onepass,sample}_acc                  token accuracy over the true-length positions
  l2t_{onepass,sample}_bleu / _token_f1 / _exact_match / _distinct_1 / _distinct_2
  l2t_{onepass,sample}_reencode_cosine      the decoded text re-encoded by `encoder`, cosine to its latent
  l2t_{onepass,sample}_reencode_cosine_shuffled   the same against another row's latent (the control)
  t2l_cosine, t2l_recall_at_1, t2l_recall_at_5    the T2L sample against the true latent; recall among
                                            the batch's latents (with fewer than 5 rows recall@5 is 1)
Per-batch scores (accuracies, cosines, recalls) are averaged over batches; text scores over all
rows. The re-encoding metrics are left out without an encoder, BLEU without sacrebleu.
Text is decoded with the tokenizer at config.tokenizer.json_file; without one, the token ids
(as words) stand in for the text and the re-encoding metrics are left out.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lgdlm_jax import model as model_lib
from lgdlm_jax import text
from lgdlm_jax.evaluation import metrics as metrics_lib
from lgdlm_jax.evaluation import samplers
from lgdlm_jax.evaluation import text_metrics

Params = Any
DECODES = (('onepass', 'one_pass'), ('sample', 'sampled'))
RECALL_AT = (1, 5)


def _decode_and_sample(params: Params, batch: dict[str, jax.Array], rng: jax.Array, *, model, config) -> dict:
  l2t_key, t2l_key = jax.random.split(rng)
  decoded = metrics_lib.l2t_predictions(params, batch, l2t_key, model=model, config=config)
  t2l_BxD = samplers.sample_t2l(
    params,
    jnp.asarray(batch['input_ids'], jnp.int32),
    jnp.asarray(batch['attention_mask'], bool),
    t2l_key,
    model=model,
    config=config,
    steps=int(config.training.eval_t2l_steps),
  )
  return {**decoded, 't2l': t2l_BxD}


class TextSuite:
  """The suite for one model and config; `run` may be called again (one compiled program per batch shape)."""

  def __init__(self, model, config: ml_collections.ConfigDict, encoder: text_metrics.Encoder | None = None):
    self.config = config
    self._step = jax.jit(functools.partial(_decode_and_sample, model=model, config=config))
    path = config.tokenizer.json_file
    self._tokenizer = text.load_tokenizer(path) if path else None
    self.encoder = encoder if self._tokenizer is not None else None
    # One line each on what the scores leave out, for the caller to show.
    self.notes = []
    if encoder is not None and self._tokenizer is None:
      self.notes.append('the re-encoding metrics are skipped: no tokenizer (tokenizer.json_file) to decode text with')
    if not text_metrics.have_bleu():
      self.notes.append('BLEU is skipped: sacrebleu is not installed (pip install -e ".[eval]")')

  def texts(self, ids_BxS: np.ndarray, mask_BxS: np.ndarray) -> list[str]:
    """The rows' texts up to their true length (token ids as words without a tokenizer)."""
    if self._tokenizer is None:
      return [' '.join(str(i) for i in row[m]) for row, m in zip(ids_BxS, mask_BxS)]
    return text.decode(self._tokenizer, np.where(mask_BxS, ids_BxS, int(self.config.tokenizer.pad_token_id)))

  def run(self, params: Params, batches, rng: jax.Array, num_examples: int = 5) -> tuple[dict[str, float], list]:
    """(metrics, examples): the module doc's metrics and the first rows' texts {reference, onepass, sample}."""
    per_batch: dict[str, list[float]] = {}
    references: list[str] = []
    decoded: dict[str, list[str]] = {name: [] for name, _ in DECODES}
    for index, batch in enumerate(batches):
      out = jax.device_get(self._step(params, batch, jax.random.fold_in(rng, index)))
      ids, mask = np.asarray(batch['input_ids']), np.asarray(batch['attention_mask']).astype(bool)
      latents = np.asarray(model_lib.as_one_latent_token(np.asarray(batch['latent'], np.float32)))[:, 0]
      scores = {f't2l_recall_at_{k}': text_metrics.recall_at_k(out['t2l'], latents, k) for k in RECALL_AT}
      scores['t2l_cosine'] = text_metrics.mean_cosine(out['t2l'], latents)
      references += self.texts(ids, mask)
      for name, key in DECODES:
        scores[f'l2t_{name}_acc'] = float(np.sum((out[key] == ids) & mask) / max(np.sum(mask), 1))
        texts = self.texts(out[key], mask)
        decoded[name] += texts
        if self.encoder is not None:
          own, shuffled = text_metrics.round_trip(self.encoder, texts, latents)
          scores[f'l2t_{name}_reencode_cosine'], scores[f'l2t_{name}_reencode_cosine_shuffled'] = own, shuffled
      for key, value in scores.items():
        per_batch.setdefault(key, []).append(value)
    if not references:
      return {}, []
    result = {key: float(np.mean(values)) for key, values in per_batch.items()}
    for name, texts in decoded.items():
      pairs = list(zip(texts, references))
      result[f'l2t_{name}_token_f1'] = float(np.mean([text_metrics.token_f1(p, r) for p, r in pairs]))
      result[f'l2t_{name}_exact_match'] = float(np.mean([text_metrics.exact_match(p, r) for p, r in pairs]))
      result[f'l2t_{name}_distinct_1'] = text_metrics.distinct_n(texts, 1)
      result[f'l2t_{name}_distinct_2'] = text_metrics.distinct_n(texts, 2)
      if text_metrics.have_bleu():
        result[f'l2t_{name}_bleu'] = text_metrics.bleu(texts, references)
    examples = [
      {'reference': references[i], **{name: decoded[name][i] for name, _ in DECODES}}
      for i in range(min(num_examples, len(references)))
    ]
    return dict(sorted(result.items())), examples
