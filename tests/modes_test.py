"""latentDLM's pretraining modes (lgdlm_jax.objective.latentdlm, mode_schedule) against a PyTorch statement of
the stable trainer's loss (lgdlm_jax.reference.stable_loss), the mode schedules, and their config errors.

The tiny model has one residual stream (the objective does not depend on R) and padded rows; each mode
compiles one value_and_grad.
"""

import functools
import subprocess
import sys

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lgdlm_jax import bench
from lgdlm_jax import config as config_lib
from lgdlm_jax import convert
from lgdlm_jax import model as model_lib
from lgdlm_jax.errors import ConfigError
from lgdlm_jax.objective import latentdlm
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.objective import terms as terms_lib
from lgdlm_jax.objective.mode_schedule import ModeSchedule
from lgdlm_jax.reference import stable_loss
from lgdlm_jax.training import loop
from lgdlm_jax.training import metrics_log
from lgdlm_jax.training import modes as modes_lib
from tests.helpers import models
from tests.helpers.runs import REPO
from tests.helpers.runs import losses_of
from tests.helpers.runs import tiny_config

BATCH, SEQ_LEN = 3, 12
MASK_TOKEN_ID = 96
TOL = 1e-5  # terms: |jax - torch| <= TOL * max(1, |torch|)
GRAD_RTOL = 1e-4  # per tensor: max|g_jax - g_torch| <= GRAD_RTOL * max|g_torch|


def make_config(parameterization: str = 'epsilon', **loss):
  config = config_lib.default_config()
  config.model = models.tiny_config(num_residual_streams=1, n_blocks=1, hidden_size=32, cond_dim=32)
  config.model.latent_parameterization = parameterization
  config.tokenizer.mask_token_id = MASK_TOKEN_ID
  config.loss.update(latent_loss_weight=0.3, **loss)
  return config


@functools.cache
def torch_pair():
  return models.build_pair(make_config().model, seed=0)


def make_batch(seed: int = 1) -> dict[str, np.ndarray]:
  tokens, latents, _, _, mask = models.make_inputs(make_config().model, batch=BATCH, seq_len=SEQ_LEN, seed=seed)
  return dict(input_ids=tokens, attention_mask=mask, latent=latents)


@functools.cache
def compiled(mode: str, parameterization: str):
  config = make_config(parameterization)
  loss_fn = functools.partial(
    latentdlm.latentdlm_loss,
    mode=mode,
    model=model_lib.MultimodalMMDiT(config.model),
    options=options_lib.from_config(config),
  )
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True)), config


def torch_terms_and_grads(config, batch, draws, mode):
  torch_model = torch_pair()[0]
  tables = models.torch_noise_tables(config.model)
  torch_batch = dict(
    input_ids=torch.tensor(batch['input_ids']).long(),
    attention_mask=torch.tensor(batch['attention_mask']),
    latent=torch.tensor(batch['latent']),
  )
  torch_draws = {k: torch.tensor(np.asarray(draws[k])) for k in ('t_text', 't_latent', 'mask_uniform', 'noise')}
  torch_model.zero_grad(set_to_none=True)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # torch's threads fight XLA's for the 2 cores
  try:
    total, terms = stable_loss.stable_loss(
      torch_model,
      torch_batch,
      torch_draws,
      mode,
      MASK_TOKEN_ID,
      config.loss.latent_loss_weight,
      tables,
      config.model.latent_parameterization,
    )
    total.backward()
  finally:
    torch.set_num_threads(threads)
  grads = {
    n: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy() for n, p in torch_model.named_parameters()
  }
  return {k: float(v.detach()) for k, v in terms.items()}, convert.torch_to_flax(grads, config.model)


class TorchParityTest(parameterized.TestCase):
  @pytest.mark.slow
  @parameterized.parameters(('unconditional', 'epsilon'), ('l2t', 'epsilon'), ('t2l', 'epsilon'))
  def test_terms_and_gradients_match_the_stable_trainer(self, mode, parameterization):
    self.check_parity(mode, parameterization)

  @pytest.mark.slow
  def test_model_latent_parameterization_is_honoured(self):
    # The reference always trains epsilon; here model.latent_parameterization sets the target.
    self.check_parity('unconditional', 'v_param')

  def check_parity(self, mode: str, parameterization: str):
    fn, config = compiled(mode, parameterization)
    _, params = torch_pair()
    batch = make_batch()
    draws = latentdlm.sample_draws(jax.random.key(3), BATCH, SEQ_LEN, config.model.latent_dim)
    with jax.default_matmul_precision('highest'):
      (loss, metrics), grads = jax.block_until_ready(fn(params, batch, draws))
    expected, expected_grads = torch_terms_and_grads(config, batch, draws, mode)
    self.assertEqual(set(expected) - {'loss'}, {k for k in metrics if k.endswith('_loss')})
    for name, value in expected.items():
      self.assertLessEqual(abs(float(metrics[name]) - value), TOL * max(1.0, abs(value)), name)
    self.assertEqual(float(loss), float(metrics['loss']))
    got = jax.tree_util.tree_leaves_with_path(grads)
    want = dict(jax.tree_util.tree_leaves_with_path(expected_grads))
    for path, g in got:
      e = want[path]
      scale = float(np.abs(e).max())
      error = float(np.abs(np.asarray(g) - e).max()) / (scale if scale > 0 else 1.0)
      self.assertLessEqual(error, GRAD_RTOL, jax.tree_util.keystr(path))
    if mode == 'unconditional':  # the draws mask some positions, padding among them, and keep others
      tokens = latentdlm.masked_text(batch['input_ids'], draws['t_text'], draws['mask_uniform'], MASK_TOKEN_ID)
      masked = np.asarray(tokens) == MASK_TOKEN_ID
      self.assertTrue(0 < masked.sum() < masked.size and (masked & ~batch['attention_mask']).any())


class MaskingTest(parameterized.TestCase):
  def test_mask_probability_is_the_clipped_linear_schedule(self):
    t = jnp.array([0.0, 5e-5, 0.3, 1.0])
    np.testing.assert_allclose(latentdlm.mask_probability(t), (1 - 1e-4) * np.array([1e-4, 1e-4, 0.3, 1.0]), rtol=1e-6)

  def test_positions_below_the_probability_are_masked_padding_included(self):
    ids = jnp.arange(8, dtype=jnp.int32)[None].repeat(2, 0)
    uniform = jnp.array([[0.1, 0.6, 0.49, 0.51, 0.0, 0.9, 0.2, 0.7]] * 2)
    got = latentdlm.masked_text(ids, jnp.array([0.5, 1.0]), uniform, 99)
    np.testing.assert_array_equal(got[0], [99, 1, 99, 3, 99, 5, 99, 7])
    np.testing.assert_array_equal(got[1], [99] * 8)

  def test_text_term_averages_over_masked_positions_and_is_zero_without_any(self):
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.array([[0, 1, 2], [3, 4, 0]])
    weights = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    term, _ = latentdlm.text_term(logits, targets, weights)
    np.testing.assert_allclose(term, (ce[0, 0] + ce[0, 2] + ce[1, 2]) / (3 + 1e-8), rtol=1e-6)
    term, accuracy = latentdlm.text_term(logits, targets, jnp.zeros_like(weights))
    self.assertEqual((float(term), float(accuracy)), (0.0, 0.0))


class ConditionDropoutTest(parameterized.TestCase):
  def test_null_rows_get_the_null_condition_and_no_text_term(self):
    config = make_config()
    config.loss.condition_dropout = 0.5
    options = options_lib.from_config(config)
    batch = make_batch()
    draws = dict(latentdlm.sample_draws(jax.random.key(0), BATCH, SEQ_LEN, 8), null_uniform=jnp.array([0.1, 0.7, 0.3]))
    view = terms_lib.batch_view(batch, options)
    for mode in ('unconditional', 't2l'):
      model_pass, weights, _ = latentdlm._inputs(view, draws, mode, options)  # pylint: disable=protected-access
      null = np.array([True, False, True])
      np.testing.assert_array_equal(np.asarray(model_pass.tokens_BxS)[null], config.tokenizer.pad_token_id)
      np.testing.assert_array_equal(np.asarray(model_pass.mask_BxS)[null], False)
      np.testing.assert_array_equal(np.asarray(model_pass.mask_BxS)[~null], batch['attention_mask'][~null])
      self.assertEqual(float(np.asarray(weights)[null].sum()), 0.0)
    plain = options_lib.from_config(make_config())
    model_pass, _, _ = latentdlm._inputs(view, draws, 't2l', plain)  # pylint: disable=protected-access
    np.testing.assert_array_equal(model_pass.tokens_BxS, batch['input_ids'])

  @pytest.mark.slow  # two eager model calls
  def test_a_t2l_step_on_the_null_condition_is_the_loss_of_the_null_batch(self):
    config = make_config()
    config.loss.condition_dropout = 1.0
    model = model_lib.MultimodalMMDiT(config.model)
    batch = make_batch()
    null_batch = dict(
      batch,
      input_ids=np.full_like(batch['input_ids'], config.tokenizer.pad_token_id),
      attention_mask=np.zeros_like(batch['attention_mask']),
    )
    draws = latentdlm.sample_draws(jax.random.key(4), BATCH, SEQ_LEN, 8)
    _, params = torch_pair()
    loss = functools.partial(latentdlm.latentdlm_loss, params, mode='t2l', model=model)
    with jax.default_matmul_precision('highest'):
      dropped, _ = loss(batch, draws, options=options_lib.from_config(config))
      expected, _ = loss(null_batch, draws, options=options_lib.from_config(make_config()))
    self.assertEqual(float(dropped), float(expected))

  def test_condition_dropout_outside_t2l_and_unconditional_is_an_error(self):
    for loss_type in ('cycle_vae', 'l2t'):
      config = make_config(loss_type=loss_type, condition_dropout=0.1)
      with pytest.raises(ConfigError, match='loss.condition_dropout=0.1'):
        config_lib.finalize(config)
    config_lib.finalize(make_config(loss_type='t2l', condition_dropout=0.1))


def reference_sequential_mode(schedule: list[tuple[str, int]], step: int) -> str:
  """SPEC's rule: r = step mod the total; the first entry whose running total exceeds r."""
  r, total = step % sum(s for _, s in schedule), 0
  for mode, steps in schedule:
    total += steps
    if total > r:
      return mode
  raise AssertionError


class ScheduleTest(parameterized.TestCase):
  def test_fixed_modes(self):
    for mode in ('unconditional', 'l2t', 't2l'):
      self.assertEqual({ModeSchedule(mode).terms_at(s).name for s in range(50)}, {mode})

  def test_sequential_follows_the_reference_rule_and_repeats(self):
    entries = [('unconditional', 5), ('l2t', 10), ('t2l', 7), ('l2t', 1)]
    schedule = ModeSchedule('sequential', sequential=tuple(entries))
    for step in [*range(60), 22, 23, 10**6 + 3]:
      self.assertEqual(schedule.terms_at(step).name, reference_sequential_mode(entries, step), step)
    counts = {m.name: n for m, n in schedule.term_sets_between(0, 46).items()}
    self.assertEqual(counts, {'unconditional': 10, 'l2t': 22, 't2l': 14})

  def test_random_follows_the_weights_and_never_picks_a_zero_weight(self):
    schedule = ModeSchedule('random', weights=(3.0, 1.0, 0.0), seed=5)
    counts = {m.name: n for m, n in schedule.term_sets_between(0, 20000).items()}
    self.assertEqual(set(counts), {'unconditional', 'l2t'})
    self.assertAlmostEqual(counts['unconditional'] / 20000, 0.75, delta=0.02)
    picked = [schedule.terms_at(s).name for s in range(100)]
    self.assertEqual(
      picked, [ModeSchedule('random', weights=(3.0, 1.0, 0.0), seed=5).terms_at(s).name for s in range(100)]
    )
    other_seed = [ModeSchedule('random', weights=(3.0, 1.0, 0.0), seed=6).terms_at(s).name for s in range(100)]
    self.assertNotEqual(picked, other_seed)

  def test_random_picks_the_same_modes_in_two_processes(self):
    code = (
      'from lgdlm_jax.objective.mode_schedule import ModeSchedule\n'
      "s = ModeSchedule('random', weights=(1.0, 2.0, 1.0), seed=11)\n"
      "print(''.join(s.terms_at(i).name[0] for i in range(300)))\n"
    )
    runs = [
      subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True, capture_output=True, text=True).stdout
      for _ in range(2)
    ]
    self.assertEqual(runs[0], runs[1])
    self.assertEqual(set(runs[0].strip()), {'u', 'l', 't'})

  def test_the_train_step_reads_the_schedule_from_the_config(self):
    config = make_config(loss_type='sequential')
    config.training.sequential_schedule = (('t2l', 2), ('unconditional', 1))
    schedule = modes_lib.schedule_from_config(config_lib.finalize(config))
    self.assertEqual([schedule.terms_at(s).name for s in range(4)], ['t2l', 't2l', 'unconditional', 't2l'])


class ConfigErrorTest(parameterized.TestCase):
  @parameterized.parameters(
    ('loss', 'loss_type', 'mixed', 'loss.loss_type'),
    ('training', 'sequential_schedule', (('l2t', 3), ('cycle', 2)), 'training.sequential_schedule'),
    ('training', 'sequential_schedule', (('l2t', 0),), 'training.sequential_schedule'),
    ('training', 'mode_weights', (0.0, 0.0, 0.0), 'training.mode_weights'),
    ('training', 'mode_weights', (1.0, 2.0), 'training.mode_weights'),
  )
  def test_bad_value_is_a_one_line_error_naming_the_key(self, section, key, value, name):
    config = make_config()
    with config[section].ignore_type():
      config[section][key] = value
    with pytest.raises(ConfigError, match=name.replace('.', r'\.')) as raised:
      config_lib.finalize(config)
    self.assertNotIn('\n', str(raised.value))

  def test_sequential_needs_a_schedule_and_modes_need_no_accumulation(self):
    with pytest.raises(ConfigError, match='training.sequential_schedule'):
      config_lib.finalize(make_config(loss_type='sequential'))
    config = make_config(loss_type='l2t')
    config.training.gradient_accumulation_steps = 2
    with pytest.raises(ConfigError, match='training.gradient_accumulation_steps=2'):
      config_lib.finalize(config)

  def test_modes_take_init_from_with_its_optimizer_state(self):
    # The per-unit update counts are restored (tests/latentdlm_continuity_test.py), so this is no longer refused.
    for loss_type in ('l2t', 'random'):
      config = make_config(loss_type=loss_type)
      config.update(init_from='converted/ref', init_from_optimizer=True)
      self.assertTrue(config_lib.finalize(config).init_from_optimizer)


@pytest.mark.slow
def test_a_sequential_run_trains_validates_and_resumes_each_mode_exactly(tmp_path):
  def config(steps):
    return tiny_config(
      **{
        'loss.loss_type': 'sequential',
        'training.sequential_schedule': (('l2t', 1), ('t2l', 1)),
        'training.num_train_steps': steps,
        'training.save_every': 2,
        'training.eval_every': 4,
        'training.eval_batches': 1,
        'training.eval_sample_batches': 0,
        # One cache for the three runs: the second and third compile nothing.
        'training.compilation_cache_dir': str(tmp_path / 'cache'),
      }
    )

  full, interrupted = str(tmp_path / 'full'), str(tmp_path / 'interrupted')
  loop.run(config(4), full)
  loop.run(config(2), interrupted)
  loop.run(config(4), interrupted)  # resumes at step 2: l2t again, with t2l's units' counts restored
  records = metrics_log.read_log(full)
  assert [r['mode'] for r in records if 'mode' in r] == [1.0, 2.0, 1.0, 2.0]
  steps = [r for r in records if 'mode' in r]
  assert 'latent_loss' not in steps[0] and 'text_loss' not in steps[1]
  val = [r for r in records if 'val_loss' in r][-1]
  assert {'val_l2t_text_loss', 'val_t2l_latent_loss'} <= set(val) and 'val_unconditional_loss' not in val
  expected, got = losses_of(full), losses_of(interrupted)
  assert sorted(got) == [1, 2, 3, 4]
  assert got == expected


def test_bench_counts_one_model_pass_per_mode_step():
  flops = {
    t: bench.train_flops_per_step(make_config(loss_type=t)) for t in ('cycle_vae', 'l2t', 't2l', 'unconditional')
  }
  assert flops['t2l'] < flops['l2t'] == flops['unconditional'] < flops['cycle_vae'] / 2
