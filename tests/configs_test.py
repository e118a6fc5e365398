"""Every shipped config file loads and describes a model, an optimizer and an objective we can build."""

import importlib.util
import os

import jax
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step as train

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def load(name, *args):
  spec = importlib.util.spec_from_file_location(f'config_{name}', os.path.join(CONFIG_DIR, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


@pytest.mark.parametrize('name', ['smoke', 'base', 'cluster', 'pretrain'])
def test_config_builds(name):
  config = load(name)
  config = config_lib.finalize(config)
  optimizer_lib.make_optimizer(config)
  options_lib.from_config(config)
  assert config.training.train_batch_size >= 1


def test_cluster_config_has_the_reference_cluster_sizes():
  config = load('cluster')
  assert (
    config.model.hidden_size,
    config.model.n_blocks,
    config.model.cond_dim,
    config.model.max_seq_len,
    config.model.latent_dim,
    config.model.num_residual_streams,
  ) == (1024, 24, 1024, 4096, 32, 2)
  assert config.model.dtype == 'bfloat16'
  assert (config.optimizer.lr, config.optimizer.grad_clip_norm, config.training.warmup_steps) == (5e-5, 0.5, 2000)


@pytest.mark.parametrize('name,args', [('cluster', ()), ('finetune', ('converted/ref',))])
def test_cluster_and_finetune_follow_the_reference_advice_for_a_first_run(name, args):
  # The reference's review, section 5: T2L at latent t = 1, cycle weights 0.1 ramped in from step 0,
  # cycle_latent_t_max 0.90 (its runbook), the cycle-text gradient stopped at the round-1 latent.
  config = config_lib.finalize(load(name, *args))
  loss = config.loss
  assert loss.latent_t_mode == 'full' and loss.cycle_stop_grad_latent and loss.cycle_latent_t_max == 0.90
  assert (loss.cycle_text_weight, loss.cycle_latent_weight) == (0.1, 0.1)
  assert loss.cycle_text_warmup_steps == loss.cycle_latent_warmup_steps == 0
  assert loss.cycle_text_ramp_steps == loss.cycle_latent_ramp_steps > 0


def test_finetune_needs_the_weights_and_keeps_an_ema_and_the_best_checkpoints():
  config = config_lib.finalize(load('finetune', 'converted/ref'))
  assert config.init_from == 'converted/ref'
  assert config.training.ema_decay > 0 and config.training.keep_best_checkpoints > 0
  assert config.model == config_lib.finalize(load('cluster')).model
  with pytest.raises(ValueError, match='finetune.py:DIR'):
    load('finetune')


def test_cluster_state_fits_a_16_gib_chip_with_fsdp():
  config = load('cluster')
  model = model_lib.MultimodalMMDiT(config.model)
  optimizer = optimizer_lib.make_optimizer(config)
  abstract = jax.eval_shape(lambda k: train.init_state(config, model, optimizer, k), jax.random.key(0))
  fsdp, min_size = config.mesh.fsdp, config.mesh.min_shard_size
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.params))
  params = sharding.per_device_bytes(abstract.params, fsdp, min_size)
  opt = sharding.per_device_bytes(abstract.opt_state, fsdp, min_size)
  print(
    f'cluster: {n_params / 1e6:.0f}M parameters; per device with fsdp={fsdp}: parameters '
    f'{params / 2**30:.2f} GiB, AdamW state {opt / 2**30:.2f} GiB, gradients {params / 2**30:.2f} GiB'
  )
  assert 700e6 < n_params < 1e9
  unsharded = sharding.per_device_bytes(abstract.params, 1, min_size)
  assert params < unsharded / (fsdp - 1)  # really sharded
  # Parameters, AdamW moments and gradients take under a quarter of a 16 GiB chip. Whether one
  # 4096-token sequence's activations fit in the rest is not known (configs/cluster.py).
  assert 2 * params + opt < 4 * 2**30


def test_pretrain_follows_the_reference_schedule_and_optimizer():
  config = config_lib.finalize(load('pretrain'))
  assert config.loss.loss_type == 'sequential'
  assert config.training.sequential_schedule == (('unconditional', 5000), ('l2t', 10_000), ('t2l', 10_000))
  assert (config.optimizer.beta1, config.optimizer.beta2, config.loss.latent_loss_weight) == (0.9, 0.99, 1.0)
  assert config_lib.finalize(load('pretrain', 'unconditional')).loss.loss_type == 'unconditional'


def test_cluster_packed_variant_packs_sentences_and_names_an_unknown_variant():
  config = config_lib.finalize(load('cluster', 'packed'))
  assert config.data.packing and config.data.max_segments_per_row == 256
  assert config.loss.text_positions == 'valid' and config.model.length_head
  assert config.model.max_seq_len == 4096 and not config_lib.finalize(load('cluster')).data.packing
  with pytest.raises(ValueError, match='configs/cluster.py:pakced: unknown variant'):
    load('cluster', 'pakced')
