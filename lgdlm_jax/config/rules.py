"""Validation of a whole config, once, before any work: each key by the rule it is declared with, then
the keys that must agree with each other.

    validate(config)                                  # types, ranges, choices, keys that must agree
    check_devices(config, device_count, process_count)   # after jax.distributed start-up

Every error is a ConfigError naming the key and the value, e.g.
`model.hidden_size=0: expected an integer >= 1`.
"""

from typing import Any

import ml_collections

from lgdlm_jax.config import schema
from lgdlm_jax.errors import ConfigError


def flat_items(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  """{'section.key': value} for every leaf of a (possibly nested) config."""
  items: dict[str, Any] = {}
  for name, value in config.items():
    key = f'{prefix}{name}'
    if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
      items.update(flat_items(value, key + '.'))
    else:
      items[key] = value
  return items


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first key that is unknown, missing or has a bad value."""
  values = flat_items(config)
  unknown = sorted(values.keys() - schema.KEYS.keys())
  if unknown:
    raise ConfigError(f'{unknown[0]}: no such config key (every key is declared in lgdlm_jax/config/*_keys.py)')
  missing = sorted(schema.KEYS.keys() - values.keys())
  if missing:
    raise ConfigError(f'{missing[0]} is missing from the config (start from lgdlm_jax.config.default_config())')
  for key in schema.KEYS.values():
    key.rule(key.name, values[key.name])
  _check_agreement(config)


def validate_section(section: str, values: ml_collections.ConfigDict) -> None:
  """Checks one section on its own (e.g. the model config a checkpoint's tensors imply)."""
  present = flat_items(values, section + '.')
  for key in schema.KEYS.values():
    if key.name.startswith(section + '.'):
      if key.name not in present:
        raise ConfigError(f'{key.name} is missing from the {section} config')
      key.rule(key.name, present[key.name])


def _check_agreement(config: ml_collections.ConfigDict) -> None:
  """Keys whose values must agree with each other."""
  model, loss, data, tokenizer = config.model, config.loss, config.data, config.tokenizer
  if config.init_from_optimizer and not config.init_from:
    raise ConfigError('init_from_optimizer=True: it takes the optimizer state of init_from, which is not set')
  if not loss.cycle_latent_t_min < loss.cycle_latent_t_max:
    raise ConfigError(
      f'loss.cycle_latent_t_min={loss.cycle_latent_t_min!r}, loss.cycle_latent_t_max='
      f'{loss.cycle_latent_t_max!r}: expected min < max'
    )
  # An out-of-range id would not fail in JAX: the embedding lookup would silently fill with NaN.
  for key in ('mask_token_id', 'pad_token_id'):
    if tokenizer[key] >= model.vocab_size:
      raise ConfigError(
        f'tokenizer.{key}={tokenizer[key]} is outside the model vocabulary [0, model.vocab_size={model.vocab_size})'
      )
  if data.data_dir and (data.token_dir or data.latent_dir):
    raise ConfigError(f'data.data_dir={data.data_dir!r} and data.token_dir/latent_dir are both set; set one')
  if bool(data.token_dir) != bool(data.latent_dir):
    raise ConfigError(f'data.token_dir={data.token_dir!r} and data.latent_dir={data.latent_dir!r}: set both or neither')
  _check_text_positions(config)
  training = config.training
  if training.round_gradients == 'sequential' and not loss.cycle_stop_grad_latent:
    raise ConfigError(
      "training.round_gradients='sequential' needs loss.cycle_stop_grad_latent=True: without it the "
      "cycle-text gradient flows back into the base T2L pass (use 'joint' or 'auto')"
    )
  _check_latentdlm(config)
  if model.attention == 'cudnn' and model.dtype != 'bfloat16':
    raise ConfigError(
      f"model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN's fused attention takes "
      f'bfloat16 or float16 only), not {model.dtype!r}'
    )
  if training.eval_sample_batches > training.eval_batches:
    raise ConfigError(
      f'training.eval_sample_batches={training.eval_sample_batches} > training.eval_batches={training.eval_batches}'
    )
  if training.eval_text_metrics and not (training.eval_every and training.eval_sample_batches):
    raise ConfigError(
      'training.eval_text_metrics=True runs on the sampler batches of each evaluation; it needs '
      f'training.eval_every > 0 and training.eval_sample_batches > 0 (they are {training.eval_every} '
      f'and {training.eval_sample_batches})'
    )
  if training.keep_best_checkpoints and not training.eval_every:
    raise ConfigError(
      f'training.keep_best_checkpoints={training.keep_best_checkpoints} needs evaluations to rank '
      'checkpoints by; set training.eval_every > 0'
    )
  sampler_metric = not training.best_checkpoint_metric.endswith('_loss')
  if training.keep_best_checkpoints and sampler_metric and not training.eval_sample_batches:
    raise ConfigError(
      f'training.best_checkpoint_metric={training.best_checkpoint_metric!r} is a sampler metric; it '
      'needs training.eval_sample_batches > 0'
    )
  logs = config.logging
  for key in ('wandb_entity', 'wandb_run_name'):
    if logs[key] and not logs.wandb_project:
      raise ConfigError(f'logging.{key}={logs[key]!r} needs logging.wandb_project (W&B is off without one)')
  if logs.wandb_mode == 'offline' and not logs.wandb_project:
    raise ConfigError("logging.wandb_mode='offline' needs logging.wandb_project (W&B is off without one)")
  _, stop = training.profile_steps
  if stop > training.num_train_steps:
    raise ConfigError(
      f'training.profile_steps={tuple(training.profile_steps)!r} ends after '
      f'training.num_train_steps={training.num_train_steps}'
    )


def _check_latentdlm(config: ml_collections.ConfigDict) -> None:
  """latentDLM's modes: a schedule to follow, and one mode (one frozen set) per optimizer update."""
  loss_type, training = config.loss.loss_type, config.training
  if config.loss.condition_dropout > 0 and loss_type in ('cycle_vae', 'l2t'):
    raise ConfigError(
      f'loss.condition_dropout={config.loss.condition_dropout}: applies to the t2l and unconditional modes only, '
      f'not to loss.loss_type={loss_type!r}'
    )
  if loss_type != 'cycle_vae' and (config.data.packing or config.loss.text_positions != 'all'):
    raise ConfigError(
      f"loss.loss_type={loss_type!r} trains on unpacked rows with the reference's text positions: "
      "data.packing=True and loss.text_positions='valid' apply to cycle_vae only"
    )
  if loss_type == 'sequential' and not training.sequential_schedule:
    raise ConfigError("loss.loss_type='sequential' needs training.sequential_schedule ((mode, steps), ...)")
  if loss_type != 'cycle_vae' and training.gradient_accumulation_steps > 1:
    raise ConfigError(
      f'training.gradient_accumulation_steps={training.gradient_accumulation_steps}: '
      f'loss.loss_type={loss_type!r} updates once per batch (as the reference); use 1'
    )


def _check_text_positions(config: ml_collections.ConfigDict) -> None:
  """Packed rows need loss.text_positions='valid', which learns the length with model.length_head, and
  only it does."""
  valid = config.loss.text_positions == 'valid'
  if config.data.packing and not valid:
    raise ConfigError(
      f"data.packing=True needs loss.text_positions='valid', not {config.loss.text_positions!r}: a packed row has "
      'no pad tail for the L2T loss to learn the length from (set model.length_head=True too)'
    )
  if config.model.length_head != valid:
    raise ConfigError(
      f'model.length_head={config.model.length_head} with loss.text_positions={config.loss.text_positions!r}: '
      "the length head is trained exactly when the L2T loss skips padding (set both, or neither: 'all' learns "
      'the length from the pad tail)'
    )
  if not valid and config.loss.length_loss_weight != 1.0:
    raise ConfigError(
      f"loss.length_loss_weight={config.loss.length_loss_weight!r} is read only with loss.text_positions='valid'"
    )


def check_devices(config: ml_collections.ConfigDict, device_count: int, process_count: int) -> None:
  """The checks that need the run's devices and processes (after jax.distributed start-up).

  The batch axis is split over every device (each gets its own examples) and each process reads
  its own rows, so both batch sizes must divide over both.
  """
  fsdp = config.mesh.fsdp
  if device_count % fsdp:
    raise ConfigError(f'mesh.fsdp={fsdp} does not divide the {device_count} devices')
  keys = ('train_batch_size', 'eval_batch_size') if config.training.eval_every else ('train_batch_size',)
  for key in keys:
    size = config.training[key]
    for count, what in ((device_count, 'devices'), (process_count, 'processes')):
      if size % count:
        raise ConfigError(f'training.{key}={size} does not divide over the {count} {what}; use a multiple of {count}')
