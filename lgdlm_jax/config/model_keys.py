"""The model section's keys (the reference keeps latent diffusion's keys in its model section too)."""

from lgdlm_jax.config.declare import NON_NEGATIVE
from lgdlm_jax.config.declare import POSITIVE
from lgdlm_jax.config.declare import Key
from lgdlm_jax.config.declare import boolean
from lgdlm_jax.config.declare import multiple_of
from lgdlm_jax.config.declare import number
from lgdlm_jax.config.declare import one_of

_TILING = 'how the {} tiles its work, not what it computes'

KEYS = (
  # The reference sizes its model by its tokenizer (tokenizer.path or tokenizer.vocab_size).
  Key('model.vocab_size', 8192, POSITIVE, 'Rows of the token embedding and columns of the text head.', summary=True),
  Key(
    'model.hidden_size',
    256,
    POSITIVE,
    'Width of the text and latent streams.',
    reference='model.hidden_size',
    summary=True,
  ),
  Key('model.n_blocks', 2, POSITIVE, 'MMDiT blocks.', reference='model.n_blocks', summary=True),
  Key(
    'model.cond_dim',
    256,
    POSITIVE,
    'Width of the timestep conditioning that modulates every block.',
    reference='model.cond_dim',
    summary=True,
  ),
  Key('model.max_seq_len', 128, POSITIVE, 'Tokens per text sequence.', reference='model.max_seq_len', summary=True),
  Key('model.latent_dim', 32, POSITIVE, 'Size of the latent vector.', reference='model.latent_dim', summary=True),
  Key(
    'model.num_residual_streams',
    2,
    POSITIVE,
    'Residual streams of the hyper-connections between blocks.',
    reference='model.num_residual_streams',
    summary=True,
  ),
  Key(
    'model.cluster_size',
    0,
    NON_NEGATIVE,
    'Classes of the cluster head (0 = no cluster head).',
    reference='model.cluster_size',
    summary=True,
  ),
  # No counterpart in the reference: its L2T learns the length from the pad tail (loss.text_positions).
  Key(
    'model.length_head',
    False,
    boolean,
    "A head predicting a sentence's token count from its clean latent (for loss.text_positions='valid').",
  ),
  Key(
    'model.dropout', 0.0, number(0.0, 1.0, below_max=True), 'Dropout rate inside the blocks.', reference='model.dropout'
  ),
  # Parameters stay float32 whichever is chosen.
  Key(
    'model.dtype',
    'float32',
    one_of('float32', 'bfloat16'),
    "Compute dtype of matmuls; 'bfloat16' on accelerators.",
    summary=True,
  ),
  # float32 keeps bfloat16 rounding out of the streams' sums.
  Key(
    'model.residual_dtype',
    'float32',
    one_of('float32', 'bfloat16'),
    'Dtype of the residual streams between blocks.',
    summary=True,
  ),
  # jax.lax.Precision names; None leaves jax.default_matmul_precision in charge.
  Key(
    'model.matmul_precision',
    None,
    one_of('default', 'high', 'highest', optional=True),
    "Precision of every matmul; None: jax's own default.",
  ),
  Key(
    'model.attention',
    'auto',
    one_of('auto', 'xla', 'blockwise', 'cudnn', 'splash'),
    "Attention backend (lgdlm_jax/model/attention.py); 'auto' picks one for the platform at start-up.",
    resume='the same attention by another backend (e.g. a relaunch on another platform)',
    summary=True,
  ),
  Key(
    'model.blockwise_block_size',
    512,
    POSITIVE,
    "Keys per block of the blockwise backend's online softmax.",
    resume=_TILING.format('blockwise attention'),
  ),
  # 128 is the TPU's lane width; the block is lowered to divide the padded sequence.
  Key(
    'model.splash_block_size',
    512,
    multiple_of(128),
    'Largest block of the splash kernel (a multiple of 128).',
    resume=_TILING.format('splash kernel'),
  ),
  Key(
    'model.remat_policy',
    'none',
    one_of('none', 'full', 'dots'),
    'Rematerialisation of each MMDiT block in the backward pass.',
    summary=True,
  ),
  # >= n_blocks unrolls them all, which runs faster on CPU, while 1 keeps the compile time of deep
  # models flat; auto (lgdlm_jax.model.mmdit.auto_scan_unroll) is 4 on CPU, 1 on accelerators.
  Key(
    'model.scan_unroll',
    0,
    NON_NEGATIVE,
    'MMDiT blocks per scan iteration; 0 = auto, chosen for the platform.',
    resume='how many blocks are compiled per scan iteration, not what they compute',
    summary=True,
  ),
  Key(
    'model.latent_timesteps',
    1000,
    POSITIVE,
    'Steps of the latent diffusion schedule.',
    reference='model.latent_timesteps',
  ),
  Key(
    'model.latent_beta_schedule',
    'cosine',
    one_of('cosine', 'linear', 'sigmoid'),
    'Noise schedule of the latent diffusion.',
    reference='model.latent_beta_schedule',
  ),
  Key(
    'model.latent_parameterization',
    'epsilon',
    one_of('epsilon', 'x0', 'v_param'),
    'What the model predicts for the noised latent.',
    reference='model.latent_parameterization',
  ),
)
