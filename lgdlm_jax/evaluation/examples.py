"""Decoded examples: the reference text beside the model's L2T decodings, for the console.

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


def decoded_examples(params: Params, batch: dict[str, np.ndarray], rng: jax.Array, *, model,
                     config: ml_collections.ConfigDict, num_examples: int = 3) -> list[str]:
  """Printable lines for the first rows of a host batch: the reference text and both L2T decodings.

  Text comes from the tokenizer at config.tokenizer.json_file; with no path, token ids are shown.
  Positions past each row's true length are shown as padding.
  """
  rows = {k: np.asarray(v)[:num_examples] for k, v in batch.items()}
  predict = jax.jit(functools.partial(metrics.l2t_predictions, model=model, config=config))
  predicted = jax.device_get(predict(params, rows, rng))
  mask = rows['attention_mask'].astype(bool)
  pad_id = int(config.tokenizer.pad_token_id)
  shown = {name: np.where(mask, ids, pad_id) for name, ids in
           (('reference', rows['input_ids']), ('one pass', predicted['one_pass']), ('sampled', predicted['sampled']))}
  path = config.tokenizer.json_file
  if path:
    tokenizer = text.load_tokenizer(path)
    shown = {name: text.decode(tokenizer, ids) for name, ids in shown.items()}
  else:
    shown = {name: [' '.join(str(i) for i in row[m]) for row, m in zip(ids, mask)] for name, ids in shown.items()}
  lines = []
  for i in range(len(mask)):
    lines.append(f'example {i}:')
    lines.extend(f'  {name:>9}: {texts[i]}' for name, texts in shown.items())
  return lines
