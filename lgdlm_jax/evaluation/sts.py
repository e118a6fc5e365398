"""Semantic textual similarity from T2L latents: sentence pairs with human scores, read from a local file.

    pairs = read_pairs(path)                       # InputError naming the file and line on a bad row
    scores = correlations(cosines_N, pairs.scores)  # {'spearman': ..., 'pearson': ...}

Accepted files (tab-separated, UTF-8, no quoting):
  - the STS Benchmark's own split files (`sts-test.csv`, 2017 release): no header, the score in
    column 5 and the two sentences in columns 6 and 7 (genre, file, year, id, score, sentence1,
    sentence2, and sometimes source columns after them);
  - a file with a header row naming `sentence1`, `sentence2` and `score` (or `label`) columns, as
    the GLUE STS-B and the Hugging Face `mteb/stsbenchmark-sts` splits are laid out when saved as TSV;
  - three columns: sentence1, sentence2, score (no header).
Spearman's rank correlation is Pearson's on the ranks (ties take their mean rank), from scipy when
it is installed, else computed here the same way.
"""

import dataclasses
import importlib.util

import numpy as np

from lgdlm_jax import errors

_BENCHMARK_COLUMNS = (5, 6, 4)  # sentence1, sentence2, score in an sts-*.csv row (0-based)
_HEADER_NAMES = (('sentence1',), ('sentence2',), ('score', 'label'))


@dataclasses.dataclass(frozen=True)
class Pairs:
  first: list[str]
  second: list[str]
  scores: np.ndarray  # float64 [N]
  layout: str  # which of the module doc's layouts the file had


def _columns(header: list[str]) -> tuple[int, int, int] | None:
  names = [h.strip().lower() for h in header]
  found = [next((names.index(n) for n in options if n in names), None) for options in _HEADER_NAMES]
  return None if None in found else tuple(found)


def read_pairs(path: str) -> Pairs:
  try:
    with open(path, encoding='utf-8') as f:
      lines = [line.rstrip('\r\n') for line in f]
  except OSError as e:
    raise FileNotFoundError(f'--pairs {path}: {e.strerror or e}') from e
  except UnicodeDecodeError as e:
    raise errors.InputError(f'--pairs {path}: not UTF-8 text ({e})') from e
  rows = [(number, line.split('\t')) for number, line in enumerate(lines, 1) if line.strip()]
  if not rows:
    raise errors.InputError(f'--pairs {path}: no sentence pairs')
  columns, layout = _columns(rows[0][1]), 'a header row naming sentence1, sentence2 and score'
  if columns is not None:
    rows = rows[1:]
  elif len(rows[0][1]) >= 7:
    columns, layout = _BENCHMARK_COLUMNS, "the STS Benchmark's sts-*.csv columns"
  else:
    columns, layout = (0, 1, 2), 'three columns: sentence1, sentence2, score'
  first, second, scores = [], [], []
  for number, fields in rows:
    where = f'--pairs {path} line {number}'
    if len(fields) <= max(columns):
      raise errors.InputError(f'{where}: {len(fields)} tab-separated fields; {layout} needs {max(columns) + 1}')
    try:
      score = float(fields[columns[2]])
    except ValueError:
      raise errors.InputError(f'{where}: score {fields[columns[2]]!r} is not a number ({layout})') from None
    if not np.isfinite(score):
      raise errors.InputError(f'{where}: score {score} is not finite')
    first.append(fields[columns[0]].strip())
    second.append(fields[columns[1]].strip())
    scores.append(score)
  if len(scores) < 2:
    raise errors.InputError(f'--pairs {path}: {len(scores)} pair; a correlation needs at least 2')
  return Pairs(first, second, np.asarray(scores, np.float64), layout)


def ranks(x_N: np.ndarray) -> np.ndarray:
  """1-based ranks, tied values sharing their mean rank (scipy.stats.rankdata's 'average')."""
  x = np.asarray(x_N, np.float64)
  order = np.argsort(x, kind='mergesort')
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
  result = np.empty(len(x))
  result[order] = np.repeat(mean_rank, ends - starts)
  return result


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
  return float(np.sum(x * y) / denominator) if denominator > 0 else float('nan')


def correlations(cosines_N: np.ndarray, scores_N: np.ndarray) -> dict[str, float | str]:
  """{'spearman', 'pearson', 'method'}; NaN where either side is constant."""
  x, y = np.asarray(cosines_N, np.float64), np.asarray(scores_N, np.float64)
  if importlib.util.find_spec('scipy') is not None:
    from scipy import stats  # pylint: disable=g-import-not-at-top  (optional)

    constant = np.ptp(x) == 0 or np.ptp(y) == 0
    nan = float('nan')
    return {
      'spearman': nan if constant else float(stats.spearmanr(x, y).statistic),
      'pearson': nan if constant else float(stats.pearsonr(x, y).statistic),
      'method': 'scipy.stats',
    }
  return {'spearman': _pearson(ranks(x), ranks(y)), 'pearson': _pearson(x, y), 'method': 'numpy ranks'}
