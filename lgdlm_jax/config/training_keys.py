"""The training section's keys: batches, schedule, evaluation, checkpoints, logs and the train step."""

from typing import Any

from lgdlm_jax.config.declare import NON_NEGATIVE
from lgdlm_jax.config.declare import POSITIVE
from lgdlm_jax.config.declare import Key
from lgdlm_jax.config.declare import boolean
from lgdlm_jax.config.declare import number
from lgdlm_jax.config.declare import one_of
from lgdlm_jax.config.declare import step_range
from lgdlm_jax.config.declare import string
from lgdlm_jax.errors import ConfigError

_EVALUATION = 'evaluation only'
_KEPT = 'which checkpoints are kept, not what they hold'
_CACHE = 'where compiled programs are cached, not what they compute'
_MODES = ('unconditional', 'l2t', 't2l')


def _sequential_schedule(key: str, value: Any) -> None:
  """((mode, steps), ...): each mode one of _MODES, each steps an integer >= 1."""
  pairs = value if isinstance(value, (tuple, list)) else None
  for pair in pairs or ():
    if (
      not isinstance(pair, (tuple, list))
      or len(pair) != 2
      or pair[0] not in _MODES
      or isinstance(pair[1], bool)
      or not isinstance(pair[1], int)
      or pair[1] < 1
    ):
      raise ConfigError(f'{key}: entry {pair!r} is not (mode, steps) with a mode in {", ".join(_MODES)} and steps >= 1')
  if pairs is None:
    raise ConfigError(f'{key}={value!r}: expected a list of (mode, steps) pairs')


def _mode_weights(key: str, value: Any) -> None:
  """(unconditional, l2t, t2l): three finite numbers >= 0, not all 0."""
  if (
    not isinstance(value, (tuple, list))
    or len(value) != 3
    or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float('inf') for w in value)
    or not sum(value) > 0
  ):
    raise ConfigError(f'{key}={value!r}: expected three weights >= 0 (unconditional, l2t, t2l), not all 0')


KEYS = (
  Key(
    'training.seed',
    42,
    NON_NEGATIVE,
    'Seed of the parameters, the data order and every draw.',
    reference='training.seed',
  ),
  Key(
    'training.train_batch_size',
    2,
    POSITIVE,
    'Rows per micro-batch step (see batch_size_per).',
    reference='training.train_batch_size',
  ),
  Key(
    'training.eval_batch_size',
    2,
    POSITIVE,
    'Rows per validation batch (see batch_size_per).',
    reference='training.eval_batch_size',
    resume=_EVALUATION,
  ),
  # 'process' is the reference's DDP meaning: lgdlm_jax.config.for_processes multiplies the batch
  # sizes by the process count after jax.distributed start-up.
  Key(
    'training.batch_size_per',
    'global',
    one_of('global', 'process'),
    "Whether the batch sizes count every process's rows ('global') or each process's ('process').",
    reference_default='process',
  ),
  Key(
    'training.num_train_steps',
    10,
    NON_NEGATIVE,
    'Micro-batch steps of the whole run.',
    reference='training.num_train_steps',
    resume='extends or shortens the run (a decaying learning-rate schedule is then stretched from the '
    'resumed step on; a warning says so)',
  ),
  Key(
    'training.gradient_accumulation_steps',
    1,
    POSITIVE,
    'Micro-batch steps per optimizer update.',
    reference='training.gradient_accumulation_steps',
  ),
  Key(
    'training.lr_schedule',
    'constant',
    one_of('constant', 'linear', 'cosine'),
    'Learning-rate schedule after the warmup.',
    reference='training.lr_schedule',
    lower_case=True,
  ),
  Key(
    'training.warmup_steps',
    0,
    NON_NEGATIVE,
    'Linear learning-rate warmup, in optimizer updates.',
    reference='training.warmup_steps',
  ),
  Key(
    'training.max_consecutive_nonfinite',
    5,
    POSITIVE,
    'Steps in a row with a non-finite loss or gradient (skipped) before the run stops.',
    resume='when the run gives up, not what it computes',
  ),
  Key(
    'training.log_every',
    1,
    POSITIVE,
    'Steps between training log lines.',
    reference='logging.log_every',
    resume='logging cadence only',
  ),
  # The reference's trainer never evaluates.
  Key(
    'training.eval_every',
    5,
    NON_NEGATIVE,
    'Steps between evaluations (0 = none).',
    resume='evaluation cadence only',
    reference_default=0,
  ),
  Key('training.eval_batches', 4, POSITIVE, 'Validation batches per evaluation.', resume=_EVALUATION),
  # Each costs 3 + eval_l2t_steps + 2 * eval_t2l_steps model passes.
  Key(
    'training.eval_sample_batches',
    1,
    NON_NEGATIVE,
    'Of those batches, the first N also get the sampler metrics (lgdlm_jax.evaluation).',
    resume=_EVALUATION,
  ),
  # Off by default: decoding text and re-encoding it on the host slows every evaluation.
  Key(
    'training.eval_text_metrics',
    False,
    boolean,
    'Also log the evaluation suite (BLEU, token F1, re-encoded round trip, T2L recall) over the sampler batches.',
    resume=_EVALUATION,
  ),
  Key('training.eval_l2t_steps', 8, POSITIVE, 'L2T unmasking rounds of the sampler metrics.', resume=_EVALUATION),
  Key('training.eval_t2l_steps', 10, POSITIVE, 'T2L DDIM steps of the sampler metrics.', resume=_EVALUATION),
  # 0 keeps the metric deterministic.
  Key(
    'training.eval_temperature',
    0.0,
    number(0.0),
    'L2T sampling temperature of the metrics; 0 = greedy.',
    resume=_EVALUATION,
  ),
  Key(
    'training.print_examples',
    3,
    NON_NEGATIVE,
    'Validation sentences decoded and printed at the end of training.',
    resume='console output only',
    reference_default=0,
  ),
  # The reference saves only every logging.save_every steps, 0 = never.
  Key(
    'training.save_every',
    5,
    NON_NEGATIVE,
    'Steps between checkpoints (0 = at the end only).',
    reference='logging.save_every',
    resume='checkpoint cadence only',
    reference_default=0,
  ),
  # For preemptible machines whose notice comes in minutes: a save every N minutes of wall time,
  # whatever the step time. With several processes process 0's clock decides (one small collective
  # per step while the key is on), so that every process saves the same step.
  Key(
    'training.save_every_minutes',
    0.0,
    number(0.0),
    'Also save when this many minutes have passed since the last save (0 = off).',
    resume='checkpoint cadence only',
  ),
  Key('training.keep_checkpoints', 3, POSITIVE, 'The newest N checkpoints are kept.', resume=_KEPT),
  # The run then also saves at every evaluation, so that each evaluated step can be kept.
  Key(
    'training.keep_best_checkpoints',
    0,
    NON_NEGATIVE,
    'Also keep the N best checkpoints by best_checkpoint_metric (0 = off).',
    resume=_KEPT,
  ),
  # Lower is better for losses, higher for accuracies and cosines; the sampler metrics need
  # training.eval_sample_batches > 0.
  Key(
    'training.best_checkpoint_metric',
    'val_loss',
    one_of(
      'val_loss',
      'val_base_t2l_latent_loss',
      'val_base_l2t_text_loss',
      'val_cycle_text_loss',
      'val_cycle_latent_loss',
      'val_l2t_onepass_acc',
      'val_l2t_sample_acc',
      'val_t2l_cosine',
      'val_cycle_t2l2t_acc',
      'val_cycle_l2t2l_cosine',
    ),
    'Validation metric that ranks checkpoints for keep_best_checkpoints.',
    resume='which checkpoints are kept (every checkpoint stores all validation metrics)',
  ),
  # ema = decay * ema + (1 - decay) * params after every optimizer update; when on, it is saved in
  # the checkpoint and used by evaluation, the decoded examples and `python -m lgdlm_jax.sample`.
  Key(
    'training.ema_decay',
    0.0,
    number(0.0, 1.0, below_max=True),
    'Decay of an exponential moving average of the parameters (0 = off).',
  ),
  # TensorBoard's profile plugin opens the trace.
  Key(
    'training.profile_steps',
    (0, 0),
    step_range,
    'A jax.profiler trace of the steps [start, stop) into WORKDIR/tensorboard; (0, 0) = none.',
    resume='profiling only',
  ),
  # A change to a key that shapes the run (model, optimizer, objective, data, batch, schedule) is
  # otherwise an error naming the keys.
  Key(
    'training.allow_config_change',
    False,
    boolean,
    "Resume even if keys that may not change differ from the workdir's config.json.",
    resume='this switch itself',
  ),
  # So that a relaunch (resume, a preempted job) does not compile again.
  Key('training.compilation_cache', True, boolean, 'Use a persistent XLA compilation cache.', resume=_CACHE),
  Key(
    'training.compilation_cache_dir',
    '',
    string,
    "The cache's directory; '' = WORKDIR/compilation_cache (another path can be shared by runs).",
    resume=_CACHE,
  ),
  # 'joint': one backward pass through every model pass of the objective (base T2L and L2T, then
  # the cycle passes on their outputs), all their activations held at once; 'sequential': a scan
  # over the passes, one pass's forward and backward at a time (about a quarter of the activations
  # with both cycle terms on, the same gradient, the model compiled once; needs
  # loss.cycle_stop_grad_latent); 'auto': sequential whenever loss.cycle_stop_grad_latent.
  # latentDLM's mode schedules (loss.loss_type 'sequential' and 'random'; lgdlm_jax.objective.mode_schedule).
  Key(
    'training.sequential_schedule',
    (),
    _sequential_schedule,
    "loss.loss_type='sequential': ((mode, steps), ...) run in turn and repeated, e.g. (('l2t', 100), ('t2l', 50)).",
  ),
  Key(
    'training.mode_weights',
    (1.0, 1.0, 1.0),
    _mode_weights,
    "loss.loss_type='random': the odds of unconditional, l2t and t2l; one mode per step, drawn from (seed, step).",
    reference='training.mode_weights',
  ),
  Key(
    'training.round_gradients',
    'auto',
    one_of('auto', 'joint', 'sequential'),
    "How the train step takes the objective's gradient: all passes at once, or pass by pass.",
    resume='the order the gradient is taken in, not its value',
  ),
)
