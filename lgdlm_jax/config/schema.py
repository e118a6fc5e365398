"""The configuration schema: every key lgdlm_jax reads, with its one default (the reference's smoke sizes).

Keys follow the reference's YAML sections (model, data, training, loss, optimizer, tokenizer) so users
moving from it recognise them; mesh and debug are ours. CHOICES lists the allowed values of every
key that takes one of a few names; lgdlm_jax.config.rules checks every key against its rule.
This module imports nothing from lgdlm_jax, so every room may read it.
"""

import ml_collections
from ml_collections import config_dict

CHOICES: dict[str, tuple[str, ...]] = {
    'model.dtype': ('float32', 'bfloat16'),
    'model.residual_dtype': ('float32', 'bfloat16'),
    'model.attention': ('auto', 'xla', 'blockwise', 'cudnn', 'splash'),
    # jax.lax.Precision names; None (the default) leaves jax.default_matmul_precision in charge.
    'model.matmul_precision': ('default', 'high', 'highest'),
    'model.remat_policy': ('none', 'full', 'dots'),
    'model.latent_beta_schedule': ('cosine', 'linear', 'sigmoid'),
    'model.latent_parameterization': ('epsilon', 'x0', 'v_param'),
    'training.lr_schedule': ('constant', 'linear', 'cosine'),
    # The reference builds torch.optim.AdamW (decoupled decay) for both names.
    'optimizer.name': ('adamw', 'adam'),
    # The reference also spells 'full' as 'ones' or 't1'; lgdlm_jax.config.finalize reads those as 'full'.
    'loss.latent_t_mode': ('random', 'full'),
    'loss.cycle_latent_sampling': ('argmax', 'categorical'),
    # 'global': train/eval_batch_size count every process's rows; 'process': each process's (the
    # reference's DDP meaning), multiplied by the process count after jax.distributed start-up.
    'training.batch_size_per': ('global', 'process'),
    'training.round_gradients': ('auto', 'joint', 'sequential'),
    # Validation metrics a best checkpoint can be chosen by (lower is better for losses, higher for
    # accuracies and cosines); the sampler metrics need training.eval_sample_batches > 0.
    'training.best_checkpoint_metric': (
        'val_loss', 'val_base_t2l_latent_loss', 'val_base_l2t_text_loss', 'val_cycle_text_loss',
        'val_cycle_latent_loss', 'val_l2t_onepass_acc', 'val_l2t_sample_acc', 'val_t2l_cosine',
        'val_cycle_t2l2t_acc', 'val_cycle_l2t2l_cosine'),
}


def default_config() -> ml_collections.ConfigDict:
  """Every key lgdlm_jax reads, at the smoke sizes; configs/*.py start from this and change sizes."""
  config = ml_collections.ConfigDict()
  # Start a fresh run from these weights: a directory the converter wrote, another run's training
  # workdir (its newest checkpoint) or a PyTorch checkpoint or run directory of the reference. A
  # workdir that has a checkpoint resumes from that instead.
  config.init_from = ''
  # Also take init_from's AdamW moments and step, so that the run continues mid-schedule.
  config.init_from_optimizer = False

  config.model = ml_collections.ConfigDict(dict(
      vocab_size=8192,
      hidden_size=256,
      n_blocks=2,
      cond_dim=256,
      max_seq_len=128,
      latent_dim=32,
      num_residual_streams=2,
      cluster_size=0,
      dropout=0.0,
      # Compute dtype of matmuls; parameters stay float32. 'bfloat16' on accelerators.
      dtype='float32',
      # The residual streams between blocks; float32 keeps bfloat16 rounding out of their sums.
      residual_dtype='float32',
      # Precision of every matmul (default/high/highest); None: jax's own default.
      matmul_precision=config_dict.placeholder(str),
      # Attention backend (lgdlm_jax/model/attention.py): 'auto' picks one for the platform at start-up.
      attention='auto',
      # Keys per block of the blockwise backend's online softmax.
      blockwise_block_size=512,
      # Largest block of the splash kernel (a multiple of 128; it is lowered to divide the padded sequence).
      splash_block_size=512,
      # Rematerialisation of each MMDiT block in the backward pass: 'none', 'full' or 'dots'.
      remat_policy='none',
      # MMDiT blocks per scan iteration; >= n_blocks unrolls them all, which runs faster on CPU,
      # while 1 keeps the compile time of deep models flat. 0 = auto, chosen for the platform at
      # start-up (lgdlm_jax.model.mmdit.auto_scan_unroll): 4 on CPU, 1 on accelerators.
      scan_unroll=0,
      # Latent diffusion (the reference keeps these in its model section too).
      latent_timesteps=1000,
      latent_beta_schedule='cosine',
      latent_parameterization='epsilon',
  ))

  config.data = ml_collections.ConfigDict(dict(
      # Empty directories mean synthetic data; data_dir may also be a packed directory
      # (python -m lgdlm_jax.prepare_data pack), recognised by its manifest.json.
      token_dir='',
      latent_dir='',
      data_dir='',
      split='train',  # with data_dir: the tokens/<split>/ and latents/<split>/ folders
      val_ratio=0.05,
      max_samples=0,  # 0 = all
      # Replace a corrupt sample by the next good one instead of stopping, up to max_bad_fraction
      # of the whole dataset (distinct samples, decided by all processes together).
      skip_bad_files=False,
      max_bad_fraction=0.01,
      synthetic_num_samples=4096,
      # grain worker processes that read and decode batches (0 = reader threads in the training process).
      num_workers=0,
      prefetch_batches=2,
  ))

  config.training = ml_collections.ConfigDict(dict(
      seed=42,
      train_batch_size=2,
      eval_batch_size=2,
      batch_size_per='global',
      num_train_steps=10,
      gradient_accumulation_steps=1,
      lr_schedule='constant',
      warmup_steps=0,
      max_consecutive_nonfinite=5,
      log_every=1,
      eval_every=5,
      eval_batches=4,  # validation batches per evaluation
      # Sampler metrics (lgdlm_jax.evaluation) on the first eval_sample_batches of those batches;
      # each costs 3 + eval_l2t_steps + 2 * eval_t2l_steps model passes.
      eval_sample_batches=1,
      eval_l2t_steps=8,  # L2T unmasking rounds
      eval_t2l_steps=10,  # T2L DDIM steps
      eval_temperature=0.0,  # L2T sampling temperature; 0 = greedy, so the metric is deterministic
      print_examples=3,  # validation sentences decoded and printed at the end of training
      save_every=5,
      keep_checkpoints=3,  # the newest N checkpoints are kept
      # Besides the newest ones, keep the N best by best_checkpoint_metric (0 = off); the run then
      # also saves at every evaluation, so that each evaluated step can be kept.
      keep_best_checkpoints=0,
      best_checkpoint_metric='val_loss',
      # An exponential moving average of the parameters, updated after every optimizer update:
      # ema = decay * ema + (1 - decay) * params. 0 = off. When on, it is saved in the checkpoint
      # and used by evaluation, the decoded examples and `python -m lgdlm_jax.sample`.
      ema_decay=0.0,
      # A jax.profiler trace of the micro-batch steps [start, stop) into WORKDIR/tensorboard
      # (TensorBoard's profile plugin opens it); (0, 0) = none.
      profile_steps=(0, 0),
      # Resuming checks this config against the workdir's config.json: a change to a key that
      # shapes the run (model, optimizer, objective, data, batch, schedule) is an error naming
      # the keys, unless this is True. lgdlm_jax/checkpoints/resume_check.py lists the keys that may change.
      allow_config_change=False,
      # A persistent XLA compilation cache, so that a relaunch (resume, a preempted job) does not
      # compile again. '' = WORKDIR/compilation_cache; any other path can be shared by runs.
      compilation_cache=True,
      compilation_cache_dir='',
      # How the train step takes the gradient of the objective's model passes (base T2L and L2T,
      # then the cycle passes on their outputs): 'joint' (one backward pass through every pass: all
      # their activations held at once), 'sequential' (a scan over the passes, one pass's forward
      # and backward at a time: about a quarter of the activations with both cycle terms on, the
      # same gradient, the model compiled once; needs loss.cycle_stop_grad_latent), 'auto'
      # (sequential whenever loss.cycle_stop_grad_latent).
      round_gradients='auto',
  ))

  config.loss = ml_collections.ConfigDict(dict(
      latent_loss_weight=0.1,
      latent_t_mode='random',  # random | full
      cycle_text_weight=1.0,
      cycle_text_warmup_steps=0,
      cycle_text_ramp_steps=0,
      cycle_latent_weight=0.0,
      cycle_latent_warmup_steps=0,
      cycle_latent_ramp_steps=0,
      cycle_latent_sampling='argmax',  # argmax | categorical
      cycle_latent_t_min=0.0,
      cycle_latent_t_max=0.98,
      cycle_stop_grad_latent=True,
      # Run the cycle terms on every N-th optimizer update only (the base terms on all of them);
      # 1 = every update, as the reference. A step that skips a term does not compute it.
      cycle_every=1,
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='adamw',
      lr=1e-4,
      weight_decay=0.01,
      beta1=0.9,
      beta2=0.95,
      eps=1e-8,
      grad_clip_norm=1.0,
  ))

  config.tokenizer = ml_collections.ConfigDict(dict(
      vocab_size=8192,
      mask_token_id=103,
      pad_token_id=0,
      json_file='',  # a tokenizer.json (`tokenizers` library) to show token ids as text; '' = show ids
  ))

  # Devices sharing each parameter (FSDP); the remaining devices split the batch.
  # Parameters smaller than min_shard_size elements stay replicated.
  config.mesh = ml_collections.ConfigDict(dict(fsdp=1, min_shard_size=2**14))

  # check_finite: raise at the first non-finite input, loss term or gradient, naming it (slow).
  config.debug = ml_collections.ConfigDict(dict(check_finite=False))
  return config
