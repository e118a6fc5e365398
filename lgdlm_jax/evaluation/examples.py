"""What the console shows of evaluation: one line per evaluation, and decoded examples (the
reference text beside the model's L2T decodings).

    print(eval_line(step, val_metrics))
    lines = decoded_examples(params, local_batch, rng, model=model, config=config)  # host side
"""

import functools
from typing import Any

import jax
import ml_collections
import numpy as np

from lgdlm_jax import text
from lgdlm_jax.evaluation import metrics

Params = Any


def eval_line(step: int, val: dict[str, float]) -> str:
  """One console line of an evaluation's metrics (keys without the val_ prefix): the loss, L2T
  one-pass accuracy with the true and with shuffled latents, T2L cosine against the mean-latent
  baseline; a metric the evaluation did not compute is left out. With the evaluation suite's scores
  (training.eval_text_metrics), one indented line per L2T decoding and one for T2L retrieval follow."""
  parts = []
  if 'loss' in val:
    parts.append(f'val loss {val["loss"]:.4f}')
  if 'l2t_onepass_acc' in val:
    parts.append(f'L2T acc {val["l2t_onepass_acc"]:.3f} (shuffled latents {val["l2t_onepass_acc_shuffled"]:.3f})')
  if 't2l_cosine' in val:
    parts.append(
      f'T2L cosine {val["t2l_cosine"]:.3f} (mean latent {val["t2l_mean_latent_cosine"]:.3f}, '
      f'sample norm {val["t2l_norm"]:.2f})'
    )
  line = f'eval step {step}: ' + ' | '.join(parts)
  text_scores = [
    part for part in (_decode_scores('one pass', 'onepass', val), _decode_scores('sampled', 'sample', val)) if part
  ]
  if 't2l_recall_at_1' in val:
    text_scores.append(f'T2L recall@1 {val["t2l_recall_at_1"]:.3f}, @5 {val["t2l_recall_at_5"]:.3f}')
  return line + ''.join(f'\n  {part}' for part in text_scores)


def _decode_scores(label: str, name: str, val: dict[str, float]) -> str:
  """The evaluation suite's scores of one L2T decoding (training.eval_text_metrics), '' without them."""
  if f'l2t_{name}_token_f1' not in val:
    return ''
  scores = [f'acc {val[f"l2t_{name}_acc"]:.3f}']
  if f'l2t_{name}_bleu' in val:
    scores.append(f'BLEU {val[f"l2t_{name}_bleu"]:.2f}')
  scores.append(f'token F1 {val[f"l2t_{name}_token_f1"]:.3f}')
  if f'l2t_{name}_reencode_cosine' in val:
    scores.append(
      f're-encoded cosine {val[f"l2t_{name}_reencode_cosine"]:.3f} '
      f'(shuffled latents {val[f"l2t_{name}_reencode_cosine_shuffled"]:.3f})'
    )
  scores.append(f'distinct-2 {val[f"l2t_{name}_distinct_2"]:.3f}')
  return f'{label}: ' + ', '.join(scores)


def decoded_examples(
  params: Params,
  batch: dict[str, np.ndarray],
  rng: jax.Array,
  *,
  model,
  config: ml_collections.ConfigDict,
  num_examples: int = 3,
  label: str = 'example',
) -> list[str]:
  """Printable lines for the first rows of a host batch: the reference text and both L2T decodings.

  Text comes from the tokenizer at config.tokenizer.json_file; with no path, token ids are shown.
  Positions past each row's true length are shown as padding.
  """
  pad_id = int(config.tokenizer.pad_token_id)
  if 'segment_ids' in batch:  # packed: one sentence per example
    sentences, valid = jax.device_get(metrics.per_sentence(batch, pad_id))
    batch = {k: np.asarray(v)[valid] for k, v in sentences.items()}
  rows = {k: np.asarray(v)[:num_examples] for k, v in batch.items()}
  predict = jax.jit(functools.partial(metrics.l2t_predictions, model=model, config=config))
  predicted = jax.device_get(predict(params, rows, rng))
  mask = rows['attention_mask'].astype(bool)
  shown = {
    name: np.where(mask, ids, pad_id)
    for name, ids in (
      ('reference', rows['input_ids']),
      ('one pass', predicted['one_pass']),
      ('sampled', predicted['sampled']),
    )
  }
  path = config.tokenizer.json_file
  if path:
    tokenizer = text.load_tokenizer(path)
    shown = {name: text.decode(tokenizer, ids) for name, ids in shown.items()}
  else:
    shown = {name: [' '.join(str(i) for i in row[m]) for row, m in zip(ids, mask)] for name, ids in shown.items()}
  lines = []
  for i in range(len(mask)):
    lines.append(f'{label} {i}:')
    lines.extend(f'  {name:>9}: {texts[i]}' for name, texts in shown.items())
  return lines
