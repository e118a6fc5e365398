"""latentDLM's Hydra YAMLs (latentDLM_mmdit/configs/mmdit_stable.yaml, mmdit_preprocessed.yaml), as its stable
trainer really runs them, in the shape lgdlm_jax.config.reference_yaml reads.

    tree = merge_defaults(raw, path, read)   # the `defaults:` list's group files, then the file itself
    tree, unused, notes = translate(tree)    # the values it runs with; keys it never reads; what the log says

What the trainer reads differs from what the files say (docs/reference.md section 7):
- the optimizer is torch AdamW with optimizer.betas from optimizer/adam.yaml, (0.9, 0.99); the YAML's
  beta1, beta2, name and use_fused are never read; a grad_clip_norm of 0 or null clips at 1.0;
- training.gradient_accumulation_steps is never read (one update per batch);
- a missing loss.loss_type trains unconditional;
- logging.eval_freq, save_freq, log_freq and num_eval_batches are its evaluation, save and log cadence.
"""

from collections.abc import Callable
import os
from typing import Any

from lgdlm_jax.errors import ConfigError

Tree = dict[str, Any]
# The reference's Hydra default when a schedule entry has no steps.
DEFAULT_ENTRY_STEPS = 1000
# The latent diffusion the reference always builds (its trainer reads top-level keys no YAML sets).
REFERENCE_LATENT = {'latent_timesteps': 1000, 'latent_beta_schedule': 'cosine', 'latent_parameterization': 'epsilon'}
MODES = ('unconditional', 'l2t', 't2l', 'sequential', 'random')


def is_hydra(raw: Tree) -> bool:
  """A latentDLM YAML: it composes its optimizer and logging from Hydra's `defaults:` list."""
  return 'defaults' in raw


def _deep_merge(base: Tree, top: Tree) -> Tree:
  merged = dict(base)
  for key, value in top.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = _deep_merge(merged[key], value)
    else:
      merged[key] = value
  return merged


def merge_defaults(raw: Tree, path: str | os.PathLike, read: Callable[[str], Tree]) -> Tree:
  """Hydra's composition: each `GROUP: NAME` entry's GROUP/NAME.yaml (beside `path`) under GROUP, and the
  file's own keys where `_self_` stands (last when absent)."""
  entries = raw['defaults']
  if not isinstance(entries, list):
    raise ConfigError(f'{path}: defaults={entries!r}: expected a list of GROUP: NAME entries and _self_')
  body = {k: v for k, v in raw.items() if k != 'defaults'}
  merged: Tree = {}
  if '_self_' not in entries:
    entries = [*entries, '_self_']
  for entry in entries:
    if entry == '_self_':
      merged = _deep_merge(merged, body)
      continue
    if not isinstance(entry, dict) or len(entry) != 1:
      raise ConfigError(f'{path}: defaults entry {entry!r}: expected GROUP: NAME or _self_')
    ((group, name),) = entry.items()
    group_file = os.path.join(os.path.dirname(os.path.abspath(path)), str(group), f'{name}.yaml')
    if not os.path.isfile(group_file):
      raise ConfigError(f'{path}: defaults entry {group}: {name} needs {group_file}, which does not exist')
    merged = _deep_merge(merged, {group: read(group_file)})
  return merged


def _optimizer(optimizer: Tree, unused: list[str], notes: list[str]) -> None:
  kind = optimizer.pop('type', None)
  if kind not in (None, 'adam'):
    raise ConfigError(f'optimizer.type={kind!r}: only adam (torch AdamW) is supported')
  for key in ('name', 'beta1', 'beta2', 'use_fused'):
    if key in optimizer:
      optimizer.pop(key)
      unused.append(f'optimizer.{key}')
  betas = optimizer.pop('betas', None) or (0.9, 0.999)
  if not isinstance(betas, (list, tuple)) or len(betas) != 2:
    raise ConfigError(f'optimizer.betas={betas!r}: expected [beta1, beta2]')
  optimizer['beta1'], optimizer['beta2'] = (float(b) for b in betas)
  if not optimizer.get('grad_clip_norm'):
    optimizer['grad_clip_norm'] = 1.0
  notes.append(
    f'optimizer as the reference runs it: torch AdamW, betas ({optimizer["beta1"]}, {optimizer["beta2"]}) from '
    f'optimizer.betas (beta1/beta2 are never read), lr {optimizer.get("lr")}, eps {optimizer.get("eps")}, '
    f'weight decay {optimizer.get("weight_decay")}, clip {optimizer["grad_clip_norm"]}'
  )


def _training(training: Tree, loss: Tree, unused: list[str], notes: list[str]) -> None:
  if 'gradient_accumulation_steps' in training:
    notes.append(
      f'training.gradient_accumulation_steps={training.pop("gradient_accumulation_steps")} is never read by the '
      'stable trainer: one update per batch'
    )
    unused.append('training.gradient_accumulation_steps')
  schedule = training.get('sequential_schedule')
  if schedule is not None:
    if not isinstance(schedule, list) or not all(isinstance(e, dict) and 'type' in e for e in schedule):
      raise ConfigError(f'training.sequential_schedule={schedule!r}: expected a list of {{type, steps}}')
    training['sequential_schedule'] = [[e['type'], e.get('steps', DEFAULT_ENTRY_STEPS)] for e in schedule]
  if 'mode_weights' in training:
    training['mode_weights'] = list(training['mode_weights'])
  if 'loss_type' not in loss:
    loss['loss_type'] = 'unconditional'
    notes.append('loss.loss_type is absent: the stable trainer trains unconditional')
  elif loss['loss_type'] not in MODES:
    raise ConfigError(
      f'loss.loss_type={loss["loss_type"]!r}: expected one of {", ".join(MODES)} (the reference would train '
      'unconditional; set that if it is what you want)'
    )
  if loss.get('loss_scale', 1.0) != 1.0:
    raise ConfigError(f'loss.loss_scale={loss["loss_scale"]!r}: only 1.0 is supported (the reference never unscales)')


def _logging(tree: Tree) -> None:
  """Its cadence keys, under the names the generic reader and our schema know."""
  logging_ = tree.setdefault('logging', {})
  training = tree.setdefault('training', {})
  for theirs, ours in (('log_freq', 'log_every'), ('save_freq', 'save_every')):
    if theirs in logging_:
      logging_[ours] = logging_.pop(theirs)
  for theirs, ours in (('eval_freq', 'eval_every'), ('num_eval_batches', 'eval_batches')):
    if theirs in logging_:
      training[ours] = logging_.pop(theirs)


def translate(tree: Tree) -> tuple[Tree, list[str], list[str]]:
  """(the tree with the values the stable trainer runs with, keys it never reads, lines for the log)."""
  tree = _deep_merge({}, tree)
  unused: list[str] = []
  notes: list[str] = []
  _optimizer(tree.setdefault('optimizer', {}), unused, notes)
  _training(tree.setdefault('training', {}), tree.setdefault('loss', {}), unused, notes)
  _logging(tree)
  model = tree.get('model', {})
  declared = {k: model.get(k, v) for k, v in REFERENCE_LATENT.items()}
  if declared != REFERENCE_LATENT:
    notes.append(
      f'model latent diffusion {declared}: lgdlm_jax trains it; the reference always trains {REFERENCE_LATENT}'
    )
  if str(tree['training'].get('dtype', '')).lower() in ('bf16', 'bfloat16'):
    notes.append('training.dtype=bf16: bfloat16 compute over float32 master weights (the reference trains bf16 ones)')
  notes.append(
    'learning rate: the reference warms up as lr * step / warmup (0 at step 0); lgdlm_jax as lr * (step + 1) / '
    'warmup, and its cosine stays at 10% past num_train_steps'
  )
  return tree, unused, notes
