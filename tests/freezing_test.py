"""Parameters frozen per latentDLM mode (lgdlm_jax.training.freezing): the same tensors as torch leaves without a
gradient, left bit-identical with their AdamW state, and a sequential run equal to the twin trainer with torch's
AdamW (lgdlm_jax.reference.stable_trainer)."""

import functools

from absl.testing import parameterized
import flax
import jax
import numpy as np
import pytest
import torch

from lgdlm_jax import config as config_lib
from lgdlm_jax import convert
from lgdlm_jax import model as model_lib
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.objective.mode_schedule import Mode
from lgdlm_jax.reference import stable_loss
from lgdlm_jax.reference import stable_trainer
from lgdlm_jax.training import freezing
from lgdlm_jax.training import modes as modes_lib
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import step as train
from tests.helpers import models

BATCH, SEQ_LEN = 3, 12
MASK_TOKEN_ID = 96
SCHEDULE = (('unconditional', 3), ('l2t', 3), ('t2l', 3))


def make_config(**model):
  config = config_lib.default_config()
  config.model = models.tiny_config(**{'num_residual_streams': 1, **model})
  config.tokenizer.mask_token_id = MASK_TOKEN_ID
  config.loss.update(loss_type='sequential', latent_loss_weight=0.5)
  config.training.update(sequential_schedule=SCHEDULE, warmup_steps=2, num_train_steps=9, lr_schedule='cosine')
  # Betas as the reference's adam.yaml; a large decay and a clip that acts, so that skipping them shows. eps 1e-6:
  # Adam's first update is g / (|g| + eps), which for the few gradients near 1e-8 turns float32 noise between
  # the frameworks into differences of lr / 20; the comparison is of the freezing, not of that.
  config.optimizer.update(lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1, grad_clip_norm=0.5)
  return config_lib.finalize(config)


def make_batch(config, seed):
  tokens, latents, _, _, mask = models.make_inputs(config.model, batch=BATCH, seq_len=SEQ_LEN, seed=seed)
  return dict(input_ids=tokens, attention_mask=mask, latent=latents)


def torch_batch_and_draws(batch, draws):
  return (
    dict(
      input_ids=torch.tensor(batch['input_ids']).long(),
      attention_mask=torch.tensor(batch['attention_mask']),
      latent=torch.tensor(batch['latent']),
    ),
    {k: torch.tensor(np.asarray(draws[k])) for k in ('t_text', 't_latent', 'mask_uniform', 'noise')},
  )


class FrozenUnitsTest(parameterized.TestCase):
  @parameterized.parameters('unconditional', 'l2t', 't2l')
  def test_frozen_units_are_the_tensors_torch_leaves_without_gradient(self, mode):
    # Two blocks, mHC streams and a cluster head: every kind of parameter the reference has.
    config = make_config(num_residual_streams=2, n_blocks=2, cluster_size=4)
    torch_model, params = models.build_pair(config.model)
    batch = make_batch(config, seed=1)
    draws = modes_lib.draws_for(jax.random.key(0), batch, config.model.latent_dim)
    for name, p in torch_model.named_parameters():
      p.requires_grad_(stable_trainer.parameter_group(name) not in stable_trainer.FROZEN[mode])
    total, _ = stable_loss.stable_loss(
      torch_model,
      *torch_batch_and_draws(batch, draws),
      mode,
      MASK_TOKEN_ID,
      0.5,
      models.torch_noise_tables(config.model),
      'epsilon',
    )
    total.backward()
    without_grad = {n: np.full(p.shape, p.grad is None, np.float32) for n, p in torch_model.named_parameters()}
    expected = flax.traverse_util.flatten_dict(convert.torch_to_flax(without_grad, config.model))
    frozen = flax.traverse_util.flatten_dict(freezing.frozen_units(params, mode))
    self.assertEqual(set(frozen), set(expected))
    for path, units in frozen.items():
      got = np.broadcast_to(units, expected[path].shape)
      np.testing.assert_array_equal(got, expected[path] > 0.5, err_msg='/'.join(path))
    self.assertTrue(frozen[('text_head_clusters', 'kernel')].all())
    if mode == 'l2t':
      np.testing.assert_array_equal(frozen[('mmdit', 'blocks', 'feedforwards_1', 'ff_2', 'kernel')].ravel(), [0, 1])

  def test_parameter_groups_are_the_references(self):
    group = lambda name: freezing.parameter_group(tuple(name.split('/')))
    self.assertEqual(group('text_encoder/token_embed/embedding'), 'text')
    self.assertEqual(group('text_head_clusters/kernel'), 'text')
    self.assertEqual(group('latent_head_3/bias'), 'latent')
    self.assertEqual(group('latent_encoder/position_embed'), 'latent')
    self.assertEqual(group('conditioning/text_sigma_map/mlp_0/kernel'), 'shared')
    self.assertEqual(group('mmdit/blocks/feedforwards_0/ff_2/kernel'), 'shared')


@functools.cache
def programs():
  """The train step, jitted per mode, and the state it starts from (the twin's weights)."""
  config = make_config(n_blocks=2)
  torch_model, params = models.build_pair(config.model)
  model = model_lib.MultimodalMMDiT(config.model)
  optimizer = optimizer_lib.make_optimizer(config)
  options = options_lib.from_config(config)
  steps = {
    mode: jax.jit(
      functools.partial(
        train.train_step, model=model, config=config, options=options, optimizer=optimizer, terms=Mode(mode)
      )
    )
    for mode in ('unconditional', 'l2t', 't2l')
  }
  zero = np.zeros((), np.int32)
  state = train.TrainState(
    step=zero, params=params, opt_state=optimizer.init(params), nonfinite_steps=zero, consecutive_nonfinite=zero
  )
  return config, steps, state, torch_model


def run_steps(modes, rng):
  config, steps, state, _ = programs()
  states = [state]
  with jax.default_matmul_precision('highest'):
    for i, mode in enumerate(modes):
      state, metrics = steps[mode](state, make_batch(config, seed=10 + i), rng)
      assert bool(metrics['step_was_finite'])
      states.append(state)
  return states


def leaves_at(tree, frozen, want_frozen):
  """The units of each leaf whose frozen flag is `want_frozen`, as numpy arrays."""
  out = {}
  for path, units in flax.traverse_util.flatten_dict(frozen).items():
    leaf = np.asarray(flax.traverse_util.flatten_dict(tree)[path])
    select = np.broadcast_to(units == want_frozen, leaf.shape)
    if select.any():
      out[path] = leaf[select]
  return out


class FreezingTest(parameterized.TestCase):
  @pytest.mark.slow
  @parameterized.parameters('l2t', 't2l')
  def test_frozen_parameters_and_their_adam_state_stay_bit_identical(self, mode):
    first, *_, last = run_steps(['unconditional', mode, mode], jax.random.key(1))
    frozen = freezing.frozen_units(first.params, mode)
    # Before the mode's steps: after the unconditional step every unit has moments and a count of 1.
    before = run_steps(['unconditional'], jax.random.key(1))[-1]
    adam = lambda s: s.opt_state[-1]
    for tree in ('params', 'mu', 'nu', 'unit_count'):
      pick = (lambda s: s.params) if tree == 'params' else (lambda s, t=tree: getattr(adam(s), t))
      kept, moved = leaves_at(pick(before), frozen, True), leaves_at(pick(last), frozen, True)
      self.assertTrue(kept)
      for path in kept:
        np.testing.assert_array_equal(moved[path], kept[path], err_msg=f'{tree} {"/".join(path)}')
      trained_before, trained = leaves_at(pick(before), frozen, False), leaves_at(pick(last), frozen, False)
      self.assertTrue(any(not np.array_equal(trained[p], trained_before[p]) for p in trained), tree)
    self.assertEqual(int(adam(last).count), 3)
    del first

  @pytest.mark.slow
  def test_sequential_run_equals_the_twin_trainer_with_torch_adamw(self):
    config, _, _, _ = programs()
    rng = jax.random.key(2)
    modes = [m for m, n in SCHEDULE for _ in range(n)]
    states = run_steps(modes, rng)
    _, params = models.build_pair(config.model)
    torch_model = models.build_pair(config.model)[0]
    trainer = models.stable_twin(config, torch_model, MASK_TOKEN_ID)
    lr = optimizer_lib.learning_rate_schedule(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
      for step, mode in enumerate(modes):
        batch = make_batch(config, seed=10 + step)
        draws = modes_lib.draws_for(jax.random.fold_in(rng, step), batch, config.model.latent_dim)
        trainer.step(*torch_batch_and_draws(batch, draws), mode, float(lr(step)))
    finally:
      torch.set_num_threads(threads)
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    expected = flax.traverse_util.flatten_dict(convert.torch_to_flax(state, config.model))
    got = flax.traverse_util.flatten_dict(states[-1].params)
    start = flax.traverse_util.flatten_dict(params)
    for path, want in expected.items():
      error = np.abs(np.asarray(got[path]) - want).max() / max(np.abs(want).max(), 1e-12)
      self.assertLessEqual(error, 1e-5, '/'.join(path))
    # Every tensor moved in some mode: the comparison is not of untouched weights.
    self.assertTrue(all(not np.array_equal(got[p], start[p]) for p in got))
