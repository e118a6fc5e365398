"""Validation of a whole config, once, before any work: every key of the schema has a rule here.

    validate(config)                                  # types, ranges, choices, keys that must agree
    check_devices(config, device_count, process_count)   # after jax.distributed start-up

Every error is a ConfigError naming the key and the value, e.g.
`model.hidden_size=0: expected an integer >= 1`.
"""

from collections.abc import Callable
import math
from typing import Any

import ml_collections

from lgdlm_jax.config import schema
from lgdlm_jax.errors import ConfigError

Rule = Callable[[str, Any], None]


def _bad(key: str, value: Any, why: str) -> ConfigError:
  return ConfigError(f'{key}={value!r}: {why}')


def integer(minimum: int) -> Rule:
  def check(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise _bad(key, value, f'expected an integer >= {minimum}')
  return check


def number(minimum: float = -math.inf, maximum: float = math.inf, *, below_max: bool = False,
           optional: bool = False) -> Rule:
  """A finite real number in [minimum, maximum] (or [minimum, maximum) with below_max); None if optional."""
  upper = f'< {maximum}' if below_max else f'<= {maximum}'
  span = f'in [{minimum}, {maximum}{")" if below_max else "]"}' if math.isfinite(maximum) else f'>= {minimum}'

  def check(key: str, value: Any) -> None:
    if value is None and optional:
      return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise _bad(key, value, f'expected a finite number {span}' + (' or None' if optional else ''))
    if value < minimum or (value >= maximum if below_max else value > maximum):
      raise _bad(key, value, f'expected a number {span}' if math.isfinite(minimum) else f'expected {upper}')
  return check


def boolean(key: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise _bad(key, value, 'expected True or False')


def string(key: str, value: Any) -> None:
  if not isinstance(value, str):
    raise _bad(key, value, 'expected a string')


def choice(key: str, value: Any) -> None:
  if value not in schema.CHOICES[key]:
    raise _bad(key, value, f'expected one of {", ".join(schema.CHOICES[key])}')


def optional_choice(key: str, value: Any) -> None:
  if value is not None and value not in schema.CHOICES[key]:
    raise _bad(key, value, f'expected None or one of {", ".join(schema.CHOICES[key])}')


def multiple_of(step: int) -> Rule:
  def check(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < step or value % step:
      raise _bad(key, value, f'expected a positive multiple of {step}')
  return check


def step_range(key: str, value: Any) -> None:
  """(start, stop): integers with 0 <= start <= stop; (0, 0) or any empty range = none."""
  if (not isinstance(value, (tuple, list)) or len(value) != 2
      or any(isinstance(v, bool) or not isinstance(v, int) for v in value) or not 0 <= value[0] <= value[1]):
    raise _bad(key, value, 'expected (start, stop): two integers with 0 <= start <= stop')


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
RULES: dict[str, Rule] = {
    'init_from': string,  # the path itself is checked before any work, by lgdlm_jax.checkpoints.init_from
    'init_from_optimizer': boolean,
    'model.vocab_size': POSITIVE,
    'model.hidden_size': POSITIVE,
    'model.n_blocks': POSITIVE,
    'model.cond_dim': POSITIVE,
    'model.max_seq_len': POSITIVE,
    'model.latent_dim': POSITIVE,
    'model.num_residual_streams': POSITIVE,
    'model.cluster_size': NON_NEGATIVE,
    'model.dropout': number(0.0, 1.0, below_max=True),
    'model.dtype': choice,
    'model.residual_dtype': choice,
    'model.matmul_precision': optional_choice,
    'model.attention': choice,
    'model.blockwise_block_size': POSITIVE,
    # The TPU's lane width.
    'model.splash_block_size': multiple_of(128),
    'model.remat_policy': choice,
    'model.scan_unroll': NON_NEGATIVE,  # 0 = auto
    'model.latent_timesteps': POSITIVE,
    'model.latent_beta_schedule': choice,
    'model.latent_parameterization': choice,
    'data.token_dir': string,
    'data.latent_dir': string,
    'data.data_dir': string,
    'data.split': string,
    'data.val_ratio': number(0.0, 1.0, below_max=True),
    'data.max_samples': NON_NEGATIVE,
    'data.skip_bad_files': boolean,
    'data.max_bad_fraction': number(0.0, 1.0),
    'data.synthetic_num_samples': POSITIVE,
    'data.num_workers': NON_NEGATIVE,
    'data.prefetch_batches': NON_NEGATIVE,
    'training.seed': NON_NEGATIVE,
    'training.train_batch_size': POSITIVE,
    'training.eval_batch_size': POSITIVE,
    'training.batch_size_per': choice,
    'training.num_train_steps': NON_NEGATIVE,
    'training.gradient_accumulation_steps': POSITIVE,
    'training.lr_schedule': choice,
    'training.warmup_steps': NON_NEGATIVE,
    'training.max_consecutive_nonfinite': POSITIVE,
    'training.log_every': POSITIVE,
    'training.eval_every': NON_NEGATIVE,
    'training.eval_batches': POSITIVE,
    'training.eval_sample_batches': NON_NEGATIVE,
    'training.eval_l2t_steps': POSITIVE,
    'training.eval_t2l_steps': POSITIVE,
    'training.eval_temperature': number(0.0),
    'training.print_examples': NON_NEGATIVE,
    'training.save_every': NON_NEGATIVE,
    'training.keep_checkpoints': POSITIVE,
    'training.keep_best_checkpoints': NON_NEGATIVE,
    'training.best_checkpoint_metric': choice,
    'training.ema_decay': number(0.0, 1.0, below_max=True),
    'training.profile_steps': step_range,
    'training.allow_config_change': boolean,
    'training.compilation_cache': boolean,
    'training.compilation_cache_dir': string,
    'training.round_gradients': choice,
    'loss.latent_loss_weight': number(0.0),
    'loss.latent_t_mode': choice,
    'loss.cycle_text_weight': number(0.0),
    'loss.cycle_text_warmup_steps': NON_NEGATIVE,
    'loss.cycle_text_ramp_steps': NON_NEGATIVE,
    'loss.cycle_latent_weight': number(0.0),
    'loss.cycle_latent_warmup_steps': NON_NEGATIVE,
    'loss.cycle_latent_ramp_steps': NON_NEGATIVE,
    'loss.cycle_latent_sampling': choice,
    'loss.cycle_latent_t_min': number(0.0, 1.0),
    'loss.cycle_latent_t_max': number(0.0, 1.0),
    'loss.cycle_stop_grad_latent': boolean,
    'loss.cycle_every': POSITIVE,
    'optimizer.name': choice,
    'optimizer.lr': number(0.0),
    'optimizer.weight_decay': number(0.0),
    'optimizer.beta1': number(0.0, 1.0, below_max=True),
    'optimizer.beta2': number(0.0, 1.0, below_max=True),
    'optimizer.eps': number(0.0),
    # The reference always clips, and with 0 that zeroes every gradient; 0 or None means off here.
    'optimizer.grad_clip_norm': number(0.0, optional=True),
    'tokenizer.vocab_size': POSITIVE,
    'tokenizer.mask_token_id': NON_NEGATIVE,
    'tokenizer.pad_token_id': NON_NEGATIVE,
    'tokenizer.json_file': string,
    'mesh.fsdp': POSITIVE,
    'mesh.min_shard_size': NON_NEGATIVE,
    'debug.check_finite': boolean,
}


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
  unknown = sorted(values.keys() - RULES.keys())
  if unknown:
    raise ConfigError(f'{unknown[0]}: no such config key (every key is in lgdlm_jax/config/schema.py)')
  missing = sorted(RULES.keys() - values.keys())
  if missing:
    raise ConfigError(f'{missing[0]} is missing from the config (start from lgdlm_jax.config.default_config())')
  for key, rule in RULES.items():
    rule(key, values[key])
  _check_agreement(config)


def validate_section(section: str, values: ml_collections.ConfigDict) -> None:
  """Checks one section on its own (e.g. the model config a checkpoint's tensors imply)."""
  present = flat_items(values, section + '.')
  for key, rule in RULES.items():
    if key.startswith(section + '.'):
      if key not in present:
        raise ConfigError(f'{key} is missing from the {section} config')
      rule(key, present[key])


def _check_agreement(config: ml_collections.ConfigDict) -> None:
  """Keys whose values must agree with each other."""
  model, loss, data, tokenizer = config.model, config.loss, config.data, config.tokenizer
  if config.init_from_optimizer and not config.init_from:
    raise ConfigError('init_from_optimizer=True: it takes the optimizer state of init_from, which is not set')
  if not loss.cycle_latent_t_min < loss.cycle_latent_t_max:
    raise ConfigError(f'loss.cycle_latent_t_min={loss.cycle_latent_t_min!r}, loss.cycle_latent_t_max='
                      f'{loss.cycle_latent_t_max!r}: expected min < max')
  # An out-of-range id would not fail in JAX: the embedding lookup would silently fill with NaN.
  for key in ('mask_token_id', 'pad_token_id'):
    if tokenizer[key] >= model.vocab_size:
      raise ConfigError(f'tokenizer.{key}={tokenizer[key]} is outside the model vocabulary '
                        f'[0, model.vocab_size={model.vocab_size})')
  if data.data_dir and (data.token_dir or data.latent_dir):
    raise ConfigError(f'data.data_dir={data.data_dir!r} and data.token_dir/latent_dir are both set; set one')
  if bool(data.token_dir) != bool(data.latent_dir):
    raise ConfigError(f'data.token_dir={data.token_dir!r} and data.latent_dir={data.latent_dir!r}: set both or '
                      'neither')
  training = config.training
  if training.round_gradients == 'sequential' and not loss.cycle_stop_grad_latent:
    raise ConfigError("training.round_gradients='sequential' needs loss.cycle_stop_grad_latent=True: without it the "
                      "cycle-text gradient flows back into the base T2L pass (use 'joint' or 'auto')")
  if model.attention == 'cudnn' and model.dtype != 'bfloat16':
    raise ConfigError(f"model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN's fused attention takes "
                      f'bfloat16 or float16 only), not {model.dtype!r}')
  if training.eval_sample_batches > training.eval_batches:
    raise ConfigError(f'training.eval_sample_batches={training.eval_sample_batches} > '
                      f'training.eval_batches={training.eval_batches}')
  if training.keep_best_checkpoints and not training.eval_every:
    raise ConfigError(f'training.keep_best_checkpoints={training.keep_best_checkpoints} needs evaluations to rank '
                      'checkpoints by; set training.eval_every > 0')
  sampler_metric = not training.best_checkpoint_metric.endswith('_loss')
  if training.keep_best_checkpoints and sampler_metric and not training.eval_sample_batches:
    raise ConfigError(f'training.best_checkpoint_metric={training.best_checkpoint_metric!r} is a sampler metric; it '
                      'needs training.eval_sample_batches > 0')
  _, stop = training.profile_steps
  if stop > training.num_train_steps:
    raise ConfigError(f'training.profile_steps={tuple(training.profile_steps)!r} ends after '
                      f'training.num_train_steps={training.num_train_steps}')


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
        raise ConfigError(f'training.{key}={size} does not divide over the {count} {what}; use a multiple of '
                          f'{count}')
