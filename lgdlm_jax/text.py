"""Text <-> token ids through a `tokenizer.json` (the `tokenizers` library), in the reference's layout.

Encoding pads to a fixed length and truncates like the reference's preprocessing
(`padding='max_length', truncation=True`): the tokenizer's own post-processor adds its special
tokens ([CLS] ... [SEP] for BERT) and truncation keeps them. Decoding drops padding and special
tokens, as the reference's samplers do.
"""

import dataclasses
import json
import os

import numpy as np
import tokenizers

from lgdlm_jax import errors


def load_tokenizer(path: str) -> tokenizers.Tokenizer:
  """The tokenizer in a tokenizer.json file; InputError naming the file when it is missing or unreadable."""
  if os.path.isdir(path):
    raise errors.InputError(f'{path}: is a directory, expected a tokenizer.json file')
  try:
    return tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # tokenizers raises a bare Exception for a missing, empty, truncated or foreign file
    raise errors.InputError(f'{path}: cannot read the tokenizer ({" ".join(str(e).split())})') from e


def read_lines(path: str) -> list[str]:
  """The non-empty lines of a UTF-8 text file, stripped; InputError naming the file when it has none or is
  not text."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = [line.strip() for line in f if line.strip()]
  except UnicodeDecodeError as e:
    raise errors.InputError(f'{path}: not UTF-8 text ({e})') from e
  if not lines:
    raise errors.InputError(f'{path}: no text (every line is empty)')
  return lines


def token_id(tokenizer: tokenizers.Tokenizer, token: str) -> int:
  """The id of a special token such as '[PAD]' or '[MASK]'; ValueError if the vocabulary lacks it."""
  found = tokenizer.token_to_id(token)
  if found is None:
    raise ValueError(f'the tokenizer has no {token!r} token')
  return found


def encode(
  tokenizer: tokenizers.Tokenizer, texts: list[str], seq_len: int, pad_token: str = '[PAD]'
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(input_ids int32 [N,S], attention_mask uint8 [N,S], truncated bool [N]) for N texts."""
  tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())  # padding/truncation are mutable state
  tokenizer.enable_truncation(seq_len)
  tokenizer.enable_padding(length=seq_len, pad_id=token_id(tokenizer, pad_token), pad_token=pad_token)
  encodings = tokenizer.encode_batch(texts)
  ids = np.array([e.ids for e in encodings], np.int32).reshape(len(texts), seq_len)
  mask = np.array([e.attention_mask for e in encodings], np.uint8).reshape(len(texts), seq_len)
  truncated = np.array([bool(e.overflowing) for e in encodings], bool)
  return ids, mask, truncated


def decode(tokenizer: tokenizers.Tokenizer, ids_NxS: np.ndarray) -> list[str]:
  """One string per row; special tokens ([PAD], [CLS], [SEP], [MASK], ...) are dropped."""
  return [tokenizer.decode([int(i) for i in row], skip_special_tokens=True).strip() for row in np.asarray(ids_NxS)]


@dataclasses.dataclass(frozen=True)
class TokenizerFacts:
  """What the model config needs from a tokenizer: its file, size and special ids."""

  json_file: str
  vocab_size: int  # len(tokenizer): the vocabulary with added tokens, as transformers counts it
  mask_token_id: int
  pad_token_id: int


_SPECIAL_FILES = ('special_tokens_map.json', 'tokenizer_config.json')
_DEFAULT_NAMES = {'mask_token': ('[MASK]', '<mask>'), 'pad_token': ('[PAD]', '<pad>')}


def read_tokenizer_dir(path: str) -> TokenizerFacts:
  """A transformers tokenizer folder (or its tokenizer.json): size and [MASK] / [PAD] ids.

  The special tokens are the ones special_tokens_map.json or tokenizer_config.json name, else the
  usual BERT / RoBERTa spellings. InputError naming the path for anything missing.
  """
  json_file = os.path.join(path, 'tokenizer.json') if os.path.isdir(path) else path
  if not os.path.isfile(json_file):
    raise errors.InputError(
      f'tokenizer.path={path!r}: no tokenizer.json there (a transformers tokenizer folder '
      'saved with a fast tokenizer, or the tokenizer.json file itself)'
    )
  try:
    tokenizer = load_tokenizer(json_file)
  except errors.InputError as e:
    raise errors.InputError(f'tokenizer.path={path!r}: {e}') from e
  named = _named_special_tokens(os.path.dirname(json_file))
  ids = {}
  for role, defaults in _DEFAULT_NAMES.items():
    names = [named[role]] if role in named else list(defaults)
    found = [tokenizer.token_to_id(name) for name in names if tokenizer.token_to_id(name) is not None]
    if not found:
      raise errors.InputError(f'tokenizer.path={path!r}: the tokenizer has no {role} ({" or ".join(names)})')
    ids[role] = found[0]
  return TokenizerFacts(
    os.path.abspath(json_file), tokenizer.get_vocab_size(with_added_tokens=True), ids['mask_token'], ids['pad_token']
  )


def _named_special_tokens(directory: str) -> dict[str, str]:
  named: dict[str, str] = {}
  for file_name in _SPECIAL_FILES:
    file_path = os.path.join(directory, file_name)
    if not os.path.isfile(file_path):
      continue
    with open(file_path, encoding='utf-8') as f:
      content = json.load(f)
    for role in _DEFAULT_NAMES:
      value = content.get(role)
      value = value.get('content') if isinstance(value, dict) else value
      if isinstance(value, str):
        named.setdefault(role, value)
  return named
