"""The keys of every other section: the starting weights, data, loss, optimizer, tokenizer, mesh and debug."""

from lgdlm_jax.config.declare import NON_NEGATIVE
from lgdlm_jax.config.declare import POSITIVE
from lgdlm_jax.config.declare import Key
from lgdlm_jax.config.declare import boolean
from lgdlm_jax.config.declare import number
from lgdlm_jax.config.declare import one_of
from lgdlm_jax.config.declare import string

_FRESH_ONLY = 'only read by a fresh run; a resumed run starts from its checkpoint'

START = (
  # A directory the converter wrote, another run's training workdir (its newest checkpoint), or a
  # PyTorch checkpoint or run directory of the reference. A workdir that has a checkpoint resumes
  # from that instead. The path is checked before any work, by lgdlm_jax.checkpoints.init_from.
  Key(
    'init_from',
    '',
    string,
    'Start a fresh run from these weights (converted, a workdir or a PyTorch file).',
    resume=_FRESH_ONLY,
  ),
  Key(
    'init_from_optimizer',
    False,
    boolean,
    "Also take init_from's AdamW moments and step, so that the run continues mid-schedule.",
    resume=_FRESH_ONLY,
  ),
)

DATA = (
  # Empty token_dir, latent_dir and data_dir mean synthetic data.
  Key('data.token_dir', '', string, 'Folder of token files (with latent_dir).', reference='data.token_dir'),
  Key('data.latent_dir', '', string, 'Folder of latent files (with token_dir).', reference='data.latent_dir'),
  # A packed directory is recognised by its manifest.json.
  Key(
    'data.data_dir',
    '',
    string,
    'Folder with tokens/<split>/ and latents/<split>/, or a packed directory (prepare_data pack).',
    reference='data.data_dir',
  ),
  Key('data.split', 'train', string, "With data_dir: the split's folder name.", reference='data.split'),
  Key(
    'data.val_ratio',
    0.05,
    number(0.0, 1.0, below_max=True),
    'Fraction of the samples held out for validation.',
    reference='data.val_ratio',
  ),
  # The reference caps it by data.initial_scan_limit too (lgdlm_jax.config.reference_yaml).
  Key('data.max_samples', 0, NON_NEGATIVE, 'Read at most this many samples (0 = all).'),
  Key(
    'data.skip_bad_files',
    False,
    boolean,
    'Replace a corrupt sample by the next good one instead of stopping (up to max_bad_fraction).',
  ),
  # Counted over distinct samples, decided by all processes together.
  Key(
    'data.max_bad_fraction',
    0.01,
    number(0.0, 1.0),
    'With skip_bad_files: the largest fraction of bad samples.',
    resume='when the run gives up on bad data, not what it computes',
  ),
  Key('data.synthetic_num_samples', 4096, POSITIVE, 'Samples of the synthetic data set.'),
  Key(
    'data.num_workers',
    0,
    NON_NEGATIVE,
    'grain worker processes that read and decode batches (0 = reader threads in the training process).',
    reference='data.num_workers',
    resume='how many processes decode the data, not which data',
  ),
  Key('data.prefetch_batches', 2, NON_NEGATIVE, 'Batches read ahead of the train step.'),
  # Off: the reference's layout, one sample per row padded to model.max_seq_len (lgdlm_jax.data.packing).
  Key(
    'data.packing',
    False,
    boolean,
    'Pack several samples into each training row (first-fit, each with its own latent); validation stays unpacked.',
  ),
  Key('data.max_segments_per_row', 8, POSITIVE, 'With data.packing: at most this many samples (latents) per row.'),
  Key(
    'data.truncate_long_samples',
    False,
    boolean,
    'Cut samples longer than model.max_seq_len to it (stated in the log) instead of stopping with an error.',
  ),
)

LOSS = (
  Key(
    'loss.latent_loss_weight',
    0.1,
    number(0.0),
    'Weight of the base T2L latent loss.',
    reference='loss.latent_loss_weight',
  ),
  # The reference also spells 'full' as 'ones' or 't1'.
  Key(
    'loss.latent_t_mode',
    'random',
    one_of('random', 'full'),
    "Latent timestep of the T2L pass: 'random' draws one, 'full' is t = 1.",
    reference='loss.latent_t_mode',
    lower_case=True,
    aliases={'ones': 'full', 't1': 'full'},
  ),
  Key(
    'loss.cycle_text_weight',
    1.0,
    number(0.0),
    'Weight of the cycle text term (T2L, then L2T).',
    reference='loss.cycle_text_weight',
  ),
  Key(
    'loss.cycle_text_warmup_steps',
    0,
    NON_NEGATIVE,
    'Steps before the cycle text term starts.',
    reference='loss.cycle_text_warmup_steps',
  ),
  Key(
    'loss.cycle_text_ramp_steps',
    0,
    NON_NEGATIVE,
    'Steps over which its weight then ramps up linearly.',
    reference='loss.cycle_text_ramp_steps',
  ),
  Key(
    'loss.cycle_latent_weight',
    0.0,
    number(0.0),
    'Weight of the cycle latent term (L2T, then T2L).',
    reference='loss.cycle_latent_weight',
  ),
  Key(
    'loss.cycle_latent_warmup_steps',
    0,
    NON_NEGATIVE,
    'Steps before the cycle latent term starts.',
    reference='loss.cycle_latent_warmup_steps',
  ),
  Key(
    'loss.cycle_latent_ramp_steps',
    0,
    NON_NEGATIVE,
    'Steps over which its weight then ramps up linearly.',
    reference='loss.cycle_latent_ramp_steps',
  ),
  Key(
    'loss.cycle_latent_sampling',
    'argmax',
    one_of('argmax', 'categorical'),
    'How the cycle latent term reads tokens from the L2T logits.',
    reference='loss.cycle_latent_sampling',
    lower_case=True,
  ),
  Key(
    'loss.cycle_latent_t_min',
    0.0,
    number(0.0, 1.0),
    "Lowest latent timestep of the cycle latent term's draw.",
    reference='loss.cycle_latent_t_min',
  ),
  Key(
    'loss.cycle_latent_t_max',
    0.98,
    number(0.0, 1.0),
    'Highest latent timestep of that draw.',
    reference='loss.cycle_latent_t_max',
  ),
  Key(
    'loss.cycle_stop_grad_latent',
    True,
    boolean,
    'Stop the cycle text gradient at the latent the base T2L pass predicted.',
    reference='loss.cycle_stop_grad_latent',
  ),
  # A step that skips a term does not compute it.
  Key(
    'loss.cycle_every',
    1,
    POSITIVE,
    'Run the cycle terms on every N-th optimizer update only (1 = every update, as the reference).',
  ),
  # 'all' is the reference's (losses.text_cross_entropy): padding included, so L2T learns the length
  # from the pad tail; a packed row has no pad tail, and its run learns the length with model.length_head.
  Key(
    'loss.text_positions',
    'all',
    one_of('all', 'valid'),
    "L2T cross-entropy over 'all' B*S positions (the reference's) or 'valid' tokens (packed rows; needs length_head).",
  ),
  Key(
    'loss.length_loss_weight',
    1.0,
    number(0.0),
    "Weight of the length head's cross-entropy (read with loss.text_positions='valid' only).",
  ),
)

# The reference builds torch.optim.AdamW (decoupled decay) for both names; where its YAML leaves a key
# out it takes build_optimizer's and torch's defaults.
OPTIMIZER = (
  Key(
    'optimizer.name',
    'adamw',
    one_of('adamw', 'adam'),
    'Optimizer (both are AdamW, as in the reference).',
    reference='optimizer.name',
    lower_case=True,
  ),
  Key('optimizer.lr', 1e-4, number(0.0), 'Peak learning rate.', reference='optimizer.lr'),
  Key(
    'optimizer.weight_decay',
    0.01,
    number(0.0),
    'Decoupled weight decay.',
    reference='optimizer.weight_decay',
    reference_default=0.0,
  ),
  Key('optimizer.beta1', 0.9, number(0.0, 1.0, below_max=True), "AdamW's beta1.", reference='optimizer.beta1'),
  Key(
    'optimizer.beta2',
    0.95,
    number(0.0, 1.0, below_max=True),
    "AdamW's beta2.",
    reference='optimizer.beta2',
    reference_default=0.999,
  ),
  Key('optimizer.eps', 1e-8, number(0.0), "AdamW's epsilon.", reference='optimizer.eps'),
  # The reference always clips, and with 0 that zeroes every gradient.
  Key(
    'optimizer.grad_clip_norm',
    1.0,
    number(0.0, optional=True),
    'Clip the global gradient norm; 0 or None = off.',
    reference='optimizer.grad_clip_norm',
  ),
)

OTHER = (
  # The reference's tokenizer.path sets these three from the tokenizer (lgdlm_jax.config.reference_yaml).
  Key('tokenizer.vocab_size', 8192, POSITIVE, "The tokenizer's vocabulary size."),
  Key('tokenizer.mask_token_id', 103, NON_NEGATIVE, 'Id of [MASK].', reference='tokenizer.mask_token_id'),
  Key('tokenizer.pad_token_id', 0, NON_NEGATIVE, 'Id of [PAD].', reference='tokenizer.pad_token_id'),
  Key(
    'tokenizer.json_file',
    '',
    string,
    "A tokenizer.json (`tokenizers` library) to show token ids as text; '' = show ids.",
    resume='how token ids are shown as text, not the ids',
  ),
  # The remaining devices split the batch.
  Key(
    'mesh.fsdp',
    1,
    POSITIVE,
    'Devices sharing each parameter (FSDP).',
    resume='the checkpoint is restored onto whatever mesh this run has (e.g. a relaunch on another slice)',
  ),
  Key(
    'mesh.min_shard_size',
    2**14,
    NON_NEGATIVE,
    'Parameters with fewer elements stay replicated.',
    resume='the checkpoint is restored onto whatever shardings this run has',
  ),
  Key(
    'debug.check_finite',
    False,
    boolean,
    'Raise at the first non-finite input, loss term or gradient, naming it (slow).',
    resume='a debugging check; the numbers are the same',
  ),
)
