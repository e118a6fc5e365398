"""`Weights`: one set of weights with what describes it, as lgdlm_jax.checkpoints.weight_sources reads it
from any source and the exporters write it back."""

import dataclasses
from typing import Any

import ml_collections

from lgdlm_jax.convert import moments as moments_lib


@dataclasses.dataclass(frozen=True)
class Weights:
  path: str  # as given
  kind: str  # weight_sources.CONVERTED, WORKDIR or TORCH
  description: str  # what exactly was read, for messages
  model_config: ml_collections.ConfigDict  # the model the params fit
  params: Any  # Flax tree of numpy arrays in their stored dtype
  steps_done: int | None  # micro-batches applied, if the source says
  moments: moments_lib.AdamMoments | None  # only when asked for
  config: ml_collections.FrozenConfigDict | None  # a training workdir's full config
  tokenizer: dict[str, int]  # tokenizer ids the source states (may be empty)
