"""lgdlm_jax weights written back in the reference's layouts (`--to-torch`).

- `cycle` (the default for .pt): the cycle trainer's checkpoint, which its `--resume` loads:
  {model_state_dict with `model.`-prefixed keys (the trainer wraps the model), optimizer_state_dict
  (AdamW, in the reference's parameter order; None when the source has no optimizer state), step,
  cfg}. `step` follows the reference's numbering, the 0-based index of the last micro-batch applied
  (S - 1 after S micro-batches): the file is the one the reference would have written at that
  point, and like its own files its `--resume` restarts at that micro-batch.
- `latentdlm`: latentDLM's model file (save_full_model's layout), which its samplers load with
  strict=True: {model_state_dict without prefixes, config (the model section they build the model
  from), training_state: None}.
- `bare`: the state dict alone. A `.safetensors` output is always bare: safetensors holds tensors
  only, not the optimizer state, step or config.
Tensors are written in the reference model's parameter order.
"""

from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from lgdlm_jax.convert import files
from lgdlm_jax.convert import mapping
from lgdlm_jax.convert import moments as moments_lib
from lgdlm_jax.convert.weights import Weights

CYCLE = 'cycle'
LATENTDLM = 'latentdlm'
BARE = 'bare'
LAYOUTS = (CYCLE, LATENTDLM, BARE)
CYCLE_PREFIX = 'model.'
# The model keys the reference reads from its config's model section (the same names as ours).
REFERENCE_MODEL_KEYS = (
  'vocab_size',
  'hidden_size',
  'n_blocks',
  'cond_dim',
  'max_seq_len',
  'latent_dim',
  'num_residual_streams',
  'cluster_size',
  'dropout',
  'latent_timesteps',
  'latent_beta_schedule',
  'latent_parameterization',
)
REFERENCE_TRAINING_KEYS = ('seed', 'num_train_steps', 'gradient_accumulation_steps', 'lr_schedule', 'warmup_steps')


def layout_for(output: str, requested: str | None) -> str:
  """The layout an output gets: `requested`, else bare for .safetensors and cycle otherwise."""
  if output.endswith(files.SAFETENSORS_SUFFIX):
    if requested not in (None, BARE):
      raise mapping.ConversionError(
        f'--torch-layout {requested}: a .safetensors file holds tensors only, so its '
        'layout is bare; write a .pt file for the others'
      )
    return BARE
  return requested or CYCLE


def write(
  path: str,
  torch_layout: str,
  weights: Weights,
  state_dict: dict[str, np.ndarray],
  learning_rate: Callable[[int], Any] | None,
) -> str:
  """Writes `state_dict` (ordered_state_dict of `weights`) and, as `torch_layout` says, the rest of
  `weights` to `path`; returns a sentence on what the file holds.

  learning_rate: a training workdir's learning rate by step (lgdlm_jax.training.optimizer's schedule
  of weights.config), for the AdamW state the cycle layout holds; None for the other sources.
  """
  if path.endswith(files.SAFETENSORS_SUFFIX):
    safetensors.numpy.save_file(state_dict, path)
    return 'weights only (a bare state dict): a .safetensors file holds tensors, not the optimizer state or step'
  import torch  # pylint: disable=g-import-not-at-top  (a tool dependency, needed only for .pt files)

  tensors = {k: files.to_tensor(v) for k, v in state_dict.items()}
  if torch_layout == BARE:
    torch.save(tensors, path)
    return 'a bare state dict (weights only)'
  cfg = reference_config(weights)
  if torch_layout == LATENTDLM:
    torch.save({'model_state_dict': tensors, 'config': cfg, 'training_state': None}, path)
    return "latentDLM's model file: model_state_dict (keys without prefix) and config"
  steps = weights.steps_done or 0
  optimizer_state = _optimizer_state(weights, steps, learning_rate)
  torch.save(
    {
      'model_state_dict': {CYCLE_PREFIX + k: v for k, v in tensors.items()},
      'optimizer_state_dict': optimizer_state,
      'step': max(steps - 1, 0),
      'cfg': cfg,
    },
    path,
  )
  held = 'AdamW state' if optimizer_state is not None else 'no optimizer state (the source has none)'
  return (
    f"the cycle trainer's checkpoint: model_state_dict (keys with {CYCLE_PREFIX!r}), {held}, step "
    f"{max(steps - 1, 0)} (the reference's numbering for {steps} micro-batches done), cfg"
  )


def ordered_state_dict(
  params: Any, model_config: ml_collections.ConfigDict, dtype: str | None
) -> dict[str, np.ndarray]:
  """The reference's state dict of `params`, in its parameter order, optionally cast."""
  if model_config.length_head:
    logging.warning(
      'the length head (model.length_head) is not exported: the reference model has none, and its L2T '
      'sampler decodes every position'
    )
  state_dict = mapping.flax_to_torch(params, model_config)
  return cast({name: state_dict[name] for name in mapping.reference_parameter_order(model_config)}, dtype)


def cast(arrays: dict[str, np.ndarray], dtype: str | None) -> dict[str, np.ndarray]:
  """The arrays in `dtype` ('float32', 'bfloat16'), or as they are for None."""
  return arrays if dtype is None else {k: v.astype(jnp.dtype(dtype)) for k, v in arrays.items()}


def reference_config(weights: Weights) -> dict[str, Any]:
  """The reference's config sections (plain values) that describe these weights and, for a
  training workdir, its run."""
  model_config = weights.model_config
  cfg: dict[str, Any] = {'model': {k: model_config[k] for k in REFERENCE_MODEL_KEYS}}
  if weights.tokenizer:
    cfg['tokenizer'] = dict(weights.tokenizer)
  config = weights.config
  if config is not None:
    cfg['training'] = {k: config.training[k] for k in REFERENCE_TRAINING_KEYS}
    cfg['loss'] = dict(config.loss.to_dict())
    cfg['optimizer'] = dict(config.optimizer.to_dict())
  return cfg


def _optimizer_state(weights: Weights, steps: int, learning_rate: Callable[[int], Any] | None) -> dict[str, Any] | None:
  moments = weights.moments
  if moments is None:
    return None
  config = weights.config
  if config is None:  # a converted directory: the source's own AdamW settings
    hyper: Mapping[str, Any] = moments.hyperparameters
    if not {'lr', 'betas', 'eps', 'weight_decay'} <= hyper.keys():
      raise mapping.ConversionError(
        f'the {weights.description} does not record its AdamW settings; export '
        '--torch-layout latentdlm or bare (weights only)'
      )
    return moments_lib.to_torch(
      moments,
      weights.model_config,
      lr=float(hyper['lr']),
      betas=tuple(hyper['betas']),
      eps=float(hyper['eps']),
      weight_decay=float(hyper['weight_decay']),
    )
  accumulation = config.training.gradient_accumulation_steps
  if steps % accumulation:
    raise mapping.ConversionError(
      f'step {steps} is inside a gradient-accumulation group (training.gradient_accumulation_steps={accumulation}): '
      "the reference's checkpoint has no place for its partial gradient; export a step that is a multiple of "
      f'{accumulation}, or --torch-layout latentdlm or bare (weights only)'
    )
  # The learning rate the reference sets before its next micro-batch (it sets one before every micro-batch).
  lr = float(learning_rate(steps))
  return moments_lib.to_torch(
    moments,
    weights.model_config,
    lr=lr,
    betas=(config.optimizer.beta1, config.optimizer.beta2),
    eps=config.optimizer.eps,
    weight_decay=config.optimizer.weight_decay,
  )
