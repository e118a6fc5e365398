"""Tokens trained per second, all and non-padding, counted on the host from the batch's attention mask.

    tokens = count_tokens(local_batch, processes=jax.process_count())   # numpy: no device sync
    record.update(rates(tokens, seconds))   # tokens_per_s, real_tokens_per_s, padding_fraction

A token is real where `attention_mask` is True; every other position of a row is padding. The same
count serves unpacked rows (one sample padded to model.max_seq_len) and packed rows (several
samples, padding after the last), so packed and unpacked runs report comparable figures.
"""

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np


class Tokens(NamedTuple):
  """Token positions of one global batch: `total` = rows x max_seq_len, `real` = the non-padding ones."""

  real: int
  total: int

  @property
  def padding_fraction(self) -> float:
    return 1.0 - self.real / self.total if self.total else 0.0


def count_tokens(batch: Mapping[str, np.ndarray], processes: int = 1) -> Tokens:
  """The tokens of a host batch; with several processes, each holding its own rows of the global
  batch, this process's rows stand for every process's (their padding differs by sampling only:
  counting the others' would need a collective every step)."""
  mask = np.asarray(batch['attention_mask'])
  return Tokens(real=int(np.count_nonzero(mask)) * processes, total=int(mask.size) * processes)


def rates(tokens: Tokens, seconds: float, per: str = 's') -> dict[str, float]:
  """tokens_per_{per}, real_tokens_per_{per} (non-padding) and padding_fraction of `tokens` trained
  in `seconds` (`per`: the unit's name in the keys, 'sec' in the training log as it always was)."""
  seconds = max(seconds, 1e-9)
  return {
    f'tokens_per_{per}': tokens.total / seconds,
    f'real_tokens_per_{per}': tokens.real / seconds,
    'padding_fraction': tokens.padding_fraction,
  }
