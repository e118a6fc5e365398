"""Text <-> token ids through a `tokenizer.json` (the `tokenizers` library), in the reference's layout.

Encoding pads to a fixed length and truncates like the reference's preprocessing
(`padding='max_length', truncation=True`): the tokenizer's own post-processor adds its special
tokens ([CLS] ... [SEP] for BERT) and truncation keeps them. Decoding drops padding and special
tokens, as the reference's samplers do.
"""

import numpy as np
import tokenizers


def load_tokenizer(path: str) -> tokenizers.Tokenizer:
  return tokenizers.Tokenizer.from_file(path)


def token_id(tokenizer: tokenizers.Tokenizer, token: str) -> int:
  """The id of a special token such as '[PAD]' or '[MASK]'; ValueError if the vocabulary lacks it."""
  found = tokenizer.token_to_id(token)
  if found is None:
    raise ValueError(f'the tokenizer has no {token!r} token')
  return found


def encode(tokenizer: tokenizers.Tokenizer, texts: list[str], seq_len: int,
           pad_token: str = '[PAD]') -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
  return [tokenizer.decode([int(i) for i in row], skip_special_tokens=True).strip()
          for row in np.asarray(ids_NxS)]
