"""What `python -m lgdlm_jax.sample` writes: token files, texts, latents and results.json.

OUT/tokens/NAME_tokens.npz   input_ids int32 [S], attention_mask uint8 (id != [PAD])
OUT/texts.txt                NAME<TAB>text, with a tokenizer
OUT/latents/NAME.npy         float32 [D]
OUT/results.json             {'mode', 'workdir', 'settings', 'samples': [{'name', 'text', <files>}]}
"""

import json
import os
from typing import Any

import numpy as np
import tokenizers

from lgdlm_jax import text


def write_tokens(
  out: str, names: list[str], tokens: np.ndarray, pad_token_id: int, tokenizer: tokenizers.Tokenizer | None
) -> list[str] | None:
  """OUT/tokens/NAME_tokens.npz per sample and, with a tokenizer, OUT/texts.txt; the texts or None."""
  token_dir = os.path.join(out, 'tokens')
  os.makedirs(token_dir, exist_ok=True)
  mask = (tokens != pad_token_id).astype(np.uint8)
  for name, ids, m in zip(names, tokens, mask):
    np.savez(os.path.join(token_dir, f'{name}_tokens.npz'), input_ids=ids, attention_mask=m)
  print(f'Wrote {len(names)} token files to {token_dir}')
  if tokenizer is None:
    return None
  texts = text.decode(tokenizer, tokens)
  with open(os.path.join(out, 'texts.txt'), 'w', encoding='utf-8') as f:
    f.writelines(f'{name}\t{t}\n' for name, t in zip(names, texts))
  for name, t in list(zip(names, texts))[:10]:
    print(f'{name}: {t}')
  return texts


def write_latents(out: str, names: list[str], latents: np.ndarray) -> None:
  latent_dir = os.path.join(out, 'latents')
  os.makedirs(latent_dir, exist_ok=True)
  for name, latent in zip(names, latents):
    np.save(os.path.join(latent_dir, f'{name}.npy'), latent.astype(np.float32))
  print(f'Wrote {len(names)} latents to {latent_dir}')


def write_results(
  out: str, header: dict[str, Any], names: list[str], texts: list[str] | None, files: dict[str, str]
) -> None:
  """OUT/results.json: `header` (the mode and its settings) and, per sample, its name, text (where
  known) and files (`files`: kind -> path pattern with {name}, relative to OUT)."""
  samples = []
  for i, name in enumerate(names):
    entry = {'name': name}
    if texts is not None:
      entry['text'] = texts[i]
    entry.update({kind: pattern.format(name=name) for kind, pattern in files.items()})
    samples.append(entry)
  with open(os.path.join(out, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump({**header, 'samples': samples}, f, indent=2)
