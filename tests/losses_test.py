"""lgdlm_jax.objective.cycle_vae against a PyTorch statement of the reference trainer's loss, and its contract.

The tiny model here has ONE residual stream: with R = 2 the hyper-connections' unrolled Sinkhorn
makes each value-and-grad compile take ~25 s on a 2-core CPU, and nothing in the objective depends
on R (models.py holds the model to the real mmdit for R = 1, 2, 4). Compiled functions are
cached per static setting and shared between tests; the latent t mode only changes the draws, so
both t modes of a parameterization share one compile.
"""

import functools

from absl.testing import parameterized
import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from lgdlm_jax import config as config_lib
from lgdlm_jax import convert
from lgdlm_jax import model as model_lib
from lgdlm_jax.model import passes as model_passes
from lgdlm_jax.objective import cycle_schedule
from lgdlm_jax.objective import cycle_vae
from lgdlm_jax.objective import draws as draws_lib
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.objective import terms as terms_lib
from lgdlm_jax.reference import cycle_loss
from lgdlm_jax.training import gradients
from tests.helpers import models

BATCH, SEQ_LEN = 3, 12
MASK_TOKEN_ID = 96  # inside the tiny vocabulary (97); the smoke config's 103 is not
TOL = 1e-5  # loss terms: |jax - torch| <= TOL * max(1, |torch|)
GRAD_RTOL = 1e-4  # per tensor: max|g_jax - g_torch| <= GRAD_RTOL * max|g_torch|
# Ramps mid-way at PARITY_STEP, so the parity runs also check the schedule: text 1.3 * (4-2)/4,
# latent 0.7 (ramp 0, warmup 1).
PARITY_STEP = 4
PARITY_LOSS = dict(
  latent_loss_weight=0.3,
  cycle_text_weight=1.3,
  cycle_text_warmup_steps=2,
  cycle_text_ramp_steps=4,
  cycle_latent_weight=0.7,
  cycle_latent_warmup_steps=1,
  cycle_latent_ramp_steps=0,
  cycle_latent_sampling='argmax',
  cycle_stop_grad_latent=True,
)


def make_config(parameterization: str = 'epsilon', dropout: float = 0.0, **loss_overrides) -> ml_collections.ConfigDict:
  config = config_lib.default_config()
  config.model = models.tiny_config(num_residual_streams=1, dropout=dropout)
  config.model.update(latent_timesteps=1000, latent_beta_schedule='cosine', latent_parameterization=parameterization)
  config.tokenizer.mask_token_id = MASK_TOKEN_ID
  config.loss.update(PARITY_LOSS)
  config.loss.update(loss_overrides)
  return config


@functools.cache
def torch_pair():
  """The perturbed torch model and its Flax params, shared by all tests (read-only on both sides)."""
  return models.build_pair(make_config().model, seed=0)


def make_batch(seed: int = 1, latent_shape: str = 'BxD') -> dict[str, np.ndarray]:
  tokens, latents, _, _, mask = models.make_inputs(
    make_config().model, batch=BATCH, seq_len=SEQ_LEN, seed=seed, latent_shape=latent_shape
  )
  return dict(input_ids=tokens, attention_mask=mask, latent=latents)


TRACES: dict[tuple, int] = {}


@functools.cache
def compiled_loss(parameterization: str = 'epsilon', grad: bool = True, dropout: float = 0.0, **loss_overrides):
  """jit(value_and_grad(loss)) or jit(loss) for one static setting; `step` stays a traced argument."""
  config = make_config(parameterization, dropout, **loss_overrides)
  key = (parameterization, grad, dropout, tuple(sorted(loss_overrides.items())))

  def loss_fn(params, batch, draws, step):
    TRACES[key] = TRACES.get(key, 0) + 1  # runs once per trace, not per call
    return cycle_vae.cycle_vae_loss(
      params,
      batch,
      draws,
      step=step,
      model=model_lib.MultimodalMMDiT(config.model),
      options=options_lib.from_config(config),
    )

  fn = jax.value_and_grad(loss_fn, has_aux=True) if grad else loss_fn
  return jax.jit(fn), config, key


def run(fn, *args):
  # Matmul precision is part of jit's cache key; every call uses the same one.
  with jax.default_matmul_precision('highest'):
    return jax.block_until_ready(fn(*args))


def sequential_fn(config, terms=None):
  """jit of the train step's value_and_grad with training.round_gradients='sequential'."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.training.round_gradients = 'sequential'
  model = model_lib.MultimodalMMDiT(config.model)
  options = options_lib.from_config(config)
  return jax.jit(
    lambda p, b, d, s: gradients.value_and_grad(
      p, b, d, step=s, model=model, options=options, terms=terms, mode=gradients.round_gradients(config)
    )
  )


def draws_for(config, seed: int = 0):
  return draws_lib.sample_draws(jax.random.key(seed), BATCH, config.model.latent_dim, options_lib.from_config(config))


def torch_loss_and_grads(config, batch, draws, step, torch_model=None):
  """The torch twin's terms (floats) and its gradients converted to the Flax layout."""
  torch_model = torch_model or torch_pair()[0]
  tables = models.torch_noise_tables(config.model)
  torch_batch = dict(
    input_ids=torch.tensor(batch['input_ids']).long(),
    attention_mask=torch.tensor(batch['attention_mask']),
    latent=torch.tensor(batch['latent']).reshape(BATCH, -1),
  )
  torch_draws = {k: torch.tensor(np.asarray(draws[k])) for k in ('t_lat', 'noise', 't_lat2', 'noise2')}
  torch_model.zero_grad(set_to_none=True)
  # Torch's intra-op threads fight XLA's for the 2 CPU cores: 30x slower on this tiny model.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    total, terms = cycle_loss.cycle_vae_loss(
      torch_model,
      torch_batch,
      torch_draws,
      step,
      config.loss,
      config.tokenizer.mask_token_id,
      config.model.latent_parameterization,
      tables,
    )
    total.backward()
  finally:
    torch.set_num_threads(threads)
  terms = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}
  grad_state = {
    name: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy() for name, p in torch_model.named_parameters()
  }
  return terms, convert.torch_to_flax(grad_state, config.model)


def assert_terms_match(metrics, expected_terms):
  assert set(metrics) == set(expected_terms)
  for name, expected in expected_terms.items():
    got = float(metrics[name])
    assert abs(got - expected) <= TOL * max(1.0, abs(expected)), (name, got, expected)


def grad_errors(grads, expected_grads) -> dict[str, float]:
  """Per tensor max|g_jax - g_torch| / max|g_torch|."""
  got = flax.traverse_util.flatten_dict(grads)
  expected = flax.traverse_util.flatten_dict(expected_grads)
  assert set(got) == set(expected)
  errors = {}
  for path, e in expected.items():
    diff = float(np.abs(np.asarray(got[path]) - e).max())
    scale = float(np.abs(e).max())
    errors['/'.join(path)] = diff / scale if scale > 0 else diff
  return errors


class TorchParityTest(parameterized.TestCase):
  @pytest.mark.slow
  @parameterized.product(parameterization=('epsilon', 'x0', 'v_param'), t_mode=('random', 'full'))
  def test_terms_and_gradients_match_reference(self, parameterization, t_mode):
    fn, config, _ = compiled_loss(parameterization)
    _, params = torch_pair()
    batch = make_batch()
    draws = draws_for(make_config(parameterization, latent_t_mode=t_mode))  # only the draws read the t mode
    (loss, metrics), grads = run(fn, params, batch, draws, PARITY_STEP)
    expected_terms, expected_grads = torch_loss_and_grads(config, batch, draws, PARITY_STEP)
    assert_terms_match(metrics, expected_terms)
    self.assertEqual(float(loss), float(metrics['loss']))
    self.assertAlmostEqual(float(metrics['cycle_text_weight']), 0.65, places=6)
    self.assertAlmostEqual(float(metrics['cycle_latent_weight']), 0.7, places=6)
    errors = grad_errors(grads, expected_grads)
    worst = max(errors, key=errors.get)
    self.assertLessEqual(errors[worst], GRAD_RTOL, worst)
    chex.assert_tree_all_finite((loss, metrics, grads))

  @pytest.mark.slow
  def test_gradient_without_stop_grad_matches_reference_and_differs(self):
    fn_off, config, _ = compiled_loss('x0', cycle_stop_grad_latent=False)
    fn_on, _, _ = compiled_loss('x0')  # compiled by the parity test already
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    (loss_off, metrics_off), grads_off = run(fn_off, params, batch, draws, PARITY_STEP)
    (loss_on, _), grads_on = run(fn_on, params, batch, draws, PARITY_STEP)
    expected_terms, expected_grads = torch_loss_and_grads(config, batch, draws, PARITY_STEP)
    assert_terms_match(metrics_off, expected_terms)
    errors = grad_errors(grads_off, expected_grads)
    self.assertLessEqual(max(errors.values()), GRAD_RTOL, max(errors, key=errors.get))
    # Stop-grad changes only the backward pass: same loss, different gradient where the cycle
    # text loss reaches the latent head through x0_hat.
    self.assertEqual(float(loss_on), float(loss_off))
    head_on = np.asarray(grads_on['latent_head_3']['kernel'])
    head_off = np.asarray(grads_off['latent_head_3']['kernel'])
    self.assertGreater(np.abs(head_on - head_off).max(), 1e-3 * np.abs(head_on).max())
    # ... while parameters that x0_hat does not depend on, e.g. the text head, are untouched.
    np.testing.assert_allclose(grads_on['text_head']['kernel'], grads_off['text_head']['kernel'], rtol=1e-6, atol=1e-9)

  @pytest.mark.slow
  def test_sequential_gradient_matches_reference_and_joint(self):
    # The train step's gradient with training.round_gradients='sequential' (a scan over the model
    # passes, one pass's value_and_grad per iteration): the same terms and gradient as the torch
    # twin, and as the joint value_and_grad of cycle_vae_loss (compiled by the parity test already),
    # with the activations of one pass alive at a time (XLA's own memory analysis).
    fn_joint, config, _ = compiled_loss('x0')
    fn = sequential_fn(config)
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    (loss, metrics), grads = run(fn, params, batch, draws, PARITY_STEP)
    expected_terms, expected_grads = torch_loss_and_grads(config, batch, draws, PARITY_STEP)
    assert_terms_match(metrics, expected_terms)
    errors = grad_errors(grads, expected_grads)
    self.assertLessEqual(max(errors.values()), GRAD_RTOL, max(errors, key=errors.get))
    (joint_loss, joint_metrics), joint_grads = run(fn_joint, params, batch, draws, PARITY_STEP)
    np.testing.assert_allclose(float(loss), float(joint_loss), rtol=1e-6)
    chex.assert_trees_all_close(metrics, joint_metrics, rtol=1e-6)
    joint_errors = grad_errors(grads, joint_grads)
    self.assertLessEqual(max(joint_errors.values()), 1e-5, max(joint_errors, key=joint_errors.get))
    with jax.default_matmul_precision('highest'):
      temp_bytes = {
        name: f.lower(params, batch, draws, PARITY_STEP).compile().memory_analysis().temp_size_in_bytes
        for name, f in (('sequential', fn), ('joint', fn_joint))
      }
    self.assertLess(temp_bytes['sequential'], 0.7 * temp_bytes['joint'], temp_bytes)

  @pytest.mark.slow
  @parameterized.named_parameters(
    ('base_only', cycle_schedule.BASE_ONLY, 'argmax'),
    ('cycle_text', cycle_schedule.TermSet(True, False), 'argmax'),
    ('cycle_latent_sampled', cycle_schedule.TermSet(False, True), 'sample'),
  )
  def test_sequential_gradient_matches_joint_for_each_term_set(self, terms, sampling):
    config = make_config('epsilon', cycle_latent_sampling=sampling)
    model = model_lib.MultimodalMMDiT(config.model)
    options = options_lib.from_config(config)
    joint = jax.jit(
      jax.value_and_grad(
        lambda p, b, d: cycle_vae.cycle_vae_loss(p, b, d, step=PARITY_STEP, model=model, options=options, terms=terms),
        has_aux=True,
      )
    )
    sequential = sequential_fn(config, terms)
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    (loss, metrics), grads = run(sequential, params, batch, draws, PARITY_STEP)
    (joint_loss, joint_metrics), joint_grads = run(joint, params, batch, draws)
    self.assertEqual(set(metrics), set(joint_metrics))
    chex.assert_trees_all_close(metrics, joint_metrics, rtol=1e-6)
    np.testing.assert_allclose(float(loss), float(joint_loss), rtol=1e-6)
    errors = grad_errors(grads, joint_grads)
    self.assertLessEqual(max(errors.values()), 1e-5, max(errors, key=errors.get))

  @pytest.mark.slow
  def test_sequential_gradient_applies_dropout(self):
    # Each pass draws its own dropout masks (not those of the joint call, which joins the passes
    # along the batch): the loss moves with the dropout key and away from the deterministic one.
    config = make_config('epsilon', dropout=0.3)
    fn = sequential_fn(config)
    _, params = torch_pair()
    batch = make_batch()
    results = [run(fn, params, batch, draws_for(config, seed), PARITY_STEP) for seed in (0, 1)]
    deterministic = run(
      jax.jit(
        lambda p, b, d: cycle_vae.cycle_vae_loss(
          p,
          b,
          d,
          step=PARITY_STEP,
          model=model_lib.MultimodalMMDiT(config.model),
          options=options_lib.from_config(config),
          deterministic=True,
        )[0]
      ),
      params,
      batch,
      draws_for(config, 0),
    )
    losses_by_key = [float(loss) for (loss, _), _ in results]
    self.assertNotAlmostEqual(losses_by_key[0], losses_by_key[1], places=4)
    self.assertNotAlmostEqual(losses_by_key[0], float(deterministic), places=4)
    chex.assert_tree_all_finite(results)

  def test_round_gradients_auto_is_sequential_only_where_exact(self):
    config = make_config()
    self.assertEqual(gradients.round_gradients(config), 'sequential')
    config.loss.cycle_stop_grad_latent = False
    self.assertEqual(gradients.round_gradients(config), 'joint')
    config.training.round_gradients = 'joint'
    config.loss.cycle_stop_grad_latent = True
    self.assertEqual(gradients.round_gradients(config), 'joint')

  @pytest.mark.slow
  def test_terms_and_gradients_match_reference_with_hyper_connections(self):
    # R = 2 residual streams (the default of every shipped config). Some mHC scalars get gradients
    # of ~1e-12 where float32 rounding of the rest of the model dominates, so the criterion is:
    # the whole gradient to 1e-4 in relative L2 norm, and every tensor whose gradient is at least
    # 1e-3 of the largest one to GRAD_RTOL per tensor.
    config = make_config('epsilon')
    config.model.num_residual_streams = 2
    torch_model, params = models.build_pair(config.model, seed=5)
    fn = jax.jit(
      jax.value_and_grad(
        lambda p, b, d, s: cycle_vae.cycle_vae_loss(
          p, b, d, step=s, model=model_lib.MultimodalMMDiT(config.model), options=options_lib.from_config(config)
        ),
        has_aux=True,
      )
    )
    batch, draws = make_batch(), draws_for(config)
    (_, metrics), grads = run(fn, params, batch, draws, PARITY_STEP)
    expected_terms, expected_grads = torch_loss_and_grads(config, batch, draws, PARITY_STEP, torch_model)
    assert_terms_match(metrics, expected_terms)
    got = flax.traverse_util.flatten_dict(grads)
    expected = flax.traverse_util.flatten_dict(expected_grads)
    diff_norm = np.sqrt(sum(np.sum((np.asarray(got[k]) - v) ** 2) for k, v in expected.items()))
    norm = np.sqrt(sum(np.sum(v**2) for v in expected.values()))
    self.assertLessEqual(diff_norm / norm, 1e-4)
    largest = max(float(np.abs(v).max()) for v in expected.values())
    errors = grad_errors(grads, expected_grads)
    significant = {'/'.join(k): errors['/'.join(k)] for k, v in expected.items() if np.abs(v).max() >= 1e-3 * largest}
    self.assertGreater(len(significant), len(expected) // 2)
    worst = max(significant, key=significant.get)
    self.assertLessEqual(significant[worst], GRAD_RTOL, worst)


class WeightScheduleTest(parameterized.TestCase):
  @parameterized.parameters((1.3, 2, 4), (0.7, 3, 0), (2.0, 0, 0), (0.0, 0, 5), (1.0, 0, 3), (0.5, -2, -1))
  def test_ramp_matches_reference_formula_eager_and_traced(self, base, warmup, ramp):
    steps = np.array([0, 1, 2, 3, 4, 5, 6, 7, 10, 100_000], np.int32)
    expected = np.array([cycle_loss.ramp_weight(s, base, warmup, ramp) for s in steps], np.float32)
    eager = np.array([cycle_schedule.ramp_weight(int(s), base, warmup, ramp) for s in steps])
    traced = jax.jit(jax.vmap(lambda s: cycle_schedule.ramp_weight(s, base, warmup, ramp)))(steps)
    np.testing.assert_allclose(eager, expected, rtol=1e-7, atol=0)
    np.testing.assert_allclose(traced, expected, rtol=1e-7, atol=0)

  def test_ramp_formula_is_step_minus_warmup_over_ramp(self):
    # The reference's step counts from 0 and the first step after warmup still weighs 0.
    weights = [float(cycle_schedule.ramp_weight(s, 2.0, 3, 4)) for s in range(9)]
    self.assertEqual(weights, [0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0])
    self.assertEqual(float(cycle_schedule.ramp_weight(None, 2.0, 3, 4)), 2.0)

  def test_weights_ramp_inside_the_jitted_loss_without_retracing(self):
    fn, config, key = compiled_loss('epsilon')
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    run(fn, params, batch, draws, 0)
    traces = TRACES[key]
    # Python ints are traced (weakly typed int32) like the parity tests' step, so this reuses
    # their compile; a strongly typed int32 array would trace once more.
    for step in (0, 1, 2, 3, 4, 5, 6, 50):
      (loss, metrics), _ = run(fn, params, batch, draws, step)
      w_text = cycle_loss.ramp_weight(step, 1.3, 2, 4)
      w_latent = cycle_loss.ramp_weight(step, 0.7, 1, 0)
      self.assertAlmostEqual(float(metrics['cycle_text_weight']), w_text, places=6)
      self.assertAlmostEqual(float(metrics['cycle_latent_weight']), w_latent, places=6)
      total = (
        0.3 * metrics['base_t2l_latent_loss']
        + metrics['base_l2t_text_loss']
        + w_text * metrics['cycle_text_loss']
        + w_latent * metrics['cycle_latent_loss']
      )
      np.testing.assert_allclose(float(loss), float(total), rtol=1e-6)
    self.assertEqual(TRACES[key], traces)


class SamplingTest(parameterized.TestCase):
  def test_pseudo_tokens_follow_the_key(self):
    logits = jax.random.normal(jax.random.key(0), (2, SEQ_LEN, 97))
    sample = functools.partial(terms_lib.sample_pseudo_tokens, logits, 'categorical')
    a, b, again = sample(jax.random.key(1)), sample(jax.random.key(2)), sample(jax.random.key(1))
    chex.assert_shape(a, (2, SEQ_LEN))
    self.assertEqual(a.dtype, jnp.int32)
    np.testing.assert_array_equal(a, again)
    self.assertGreater(int(jnp.sum(a != b)), SEQ_LEN)
    argmax = terms_lib.sample_pseudo_tokens(logits, 'argmax', jax.random.key(1))
    np.testing.assert_array_equal(argmax, jnp.argmax(logits, -1))
    np.testing.assert_array_equal(argmax, terms_lib.sample_pseudo_tokens(logits, 'argmax', jax.random.key(2)))

  def test_categorical_loss_uses_the_sample_key(self):
    fn, config, _ = compiled_loss('epsilon', grad=False, cycle_latent_sampling='categorical')
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    _, first = run(fn, params, batch, draws, PARITY_STEP)
    _, same = run(fn, params, batch, dict(draws), PARITY_STEP)
    _, other = run(fn, params, batch, dict(draws, sample_key=jax.random.key(99)), PARITY_STEP)
    chex.assert_trees_all_equal(first, same)
    self.assertNotEqual(float(first['cycle_latent_loss']), float(other['cycle_latent_loss']))
    for name in ('base_t2l_latent_loss', 'base_l2t_text_loss', 'cycle_text_loss'):
      self.assertEqual(float(first[name]), float(other[name]), name)

  @parameterized.parameters('random', 'full')
  def test_draws(self, t_mode):
    config = make_config(latent_t_mode=t_mode, cycle_latent_t_min=0.2, cycle_latent_t_max=1.0)
    options = options_lib.from_config(config)
    sample = jax.jit(lambda key: draws_lib.sample_draws(key, 64, config.model.latent_dim, options))
    draws = sample(jax.random.key(0))
    chex.assert_trees_all_equal(draws, sample(jax.random.key(0)))
    for name in ('t_lat', 't_lat2'):
      chex.assert_shape(draws[name], (64,))
    for name in ('noise', 'noise2'):
      chex.assert_shape(draws[name], (64, config.model.latent_dim))
    if t_mode == 'full':
      np.testing.assert_array_equal(draws['t_lat'], 1.0)
    else:
      self.assertGreaterEqual(float(draws['t_lat'].min()), 0.2)
      self.assertLessEqual(float(draws['t_lat'].max()), 0.9999)
      self.assertGreater(float(jnp.abs(draws['t_lat'] - draws['t_lat2']).max()), 0.0)
    self.assertGreater(float(jnp.abs(draws['noise'] - draws['noise2']).max()), 0.0)


class ContractTest(parameterized.TestCase):
  def test_each_pass_returns_its_own_model_outputs_in_order(self):
    config = make_config()
    model = model_lib.MultimodalMMDiT(config.model)
    _, params = torch_pair()
    passes = [
      model_passes.ModelPass(*models.make_inputs(config.model, batch=BATCH, seq_len=SEQ_LEN, seed=seed))
      for seed in (1, 2)
    ]
    with jax.default_matmul_precision('highest'):
      got = jax.jit(lambda p, ps: model_passes.run_passes(model, p, ps, deterministic=True, dropout_key=None))(
        params, passes
      )
      direct = [model.apply({'params': params}, *one[:4], attention_mask=one.mask_BxS) for one in passes]
    for (text, latent), (text_ref, latent_ref) in zip(got, direct):
      chex.assert_shape(latent, (BATCH, config.model.latent_dim))
      np.testing.assert_allclose(text, text_ref, atol=1e-5, rtol=0)
      np.testing.assert_allclose(latent, latent_ref[:, 0, :], atol=1e-5, rtol=0)
    # The two passes are far apart, so a mix-up of the passes could not pass the checks above.
    self.assertGreater(float(jnp.abs(got[0][1] - got[1][1]).max()), 1e-2)

  @parameterized.parameters(((False, True),), ((True, False),), ((True, True),), ((False, False),))
  def test_unwanted_text_logits_are_none_and_the_rest_unchanged(self, wanted):
    config = make_config()
    model = model_lib.MultimodalMMDiT(config.model)
    _, params = torch_pair()
    passes = [
      model_passes.ModelPass(*models.make_inputs(config.model, batch=BATCH, seq_len=SEQ_LEN, seed=seed))
      for seed in (1, 2)
    ]
    call = lambda w: jax.jit(
      lambda p, ps: model_passes.run_passes(model, p, ps, deterministic=True, dropout_key=None, text_logits_wanted=w)
    )(params, passes)
    with jax.default_matmul_precision('highest'):
      every, some = call(None), call(wanted)
    for w, (text_all, latent_all), (text_some, latent_some) in zip(wanted, every, some):
      np.testing.assert_allclose(latent_some, latent_all, atol=1e-6, rtol=0)
      if w:
        np.testing.assert_allclose(text_some, text_all, atol=1e-6, rtol=0)
      else:
        self.assertIsNone(text_some)
    with self.assertRaisesRegex(ValueError, 'text_logits_wanted has 1 entries for 2 passes'):
      model_passes.run_passes(model, params, passes, deterministic=True, dropout_key=None, text_logits_wanted=(True,))

  def test_each_pass_draws_its_own_dropout_mask(self):
    config = make_config(dropout=0.3)
    model = model_lib.MultimodalMMDiT(config.model)
    _, params = torch_pair()
    one = model_passes.ModelPass(*models.make_inputs(config.model, batch=BATCH, seq_len=SEQ_LEN, seed=1))
    call = jax.jit(lambda key: model_passes.run_passes(model, params, [one, one], deterministic=False, dropout_key=key))
    first, again, other = call(jax.random.key(0)), call(jax.random.key(0)), call(jax.random.key(1))
    # Same input twice: only the dropout masks (drawn per row of the joint call) tell them apart.
    self.assertGreater(float(jnp.abs(first[0][1] - first[1][1]).max()), 1e-3)
    chex.assert_trees_all_equal(first, again)
    self.assertGreater(float(jnp.abs(first[0][1] - other[0][1]).max()), 1e-3)

  @parameterized.parameters((False, False), (False, True))
  def test_a_term_that_does_not_run_is_absent_and_changes_nothing_else(self, cycle_text, cycle_latent):
    fn, config, _ = compiled_loss('epsilon', grad=False, cycle_latent_sampling='categorical')
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    _, every = run(fn, params, batch, draws, PARITY_STEP)
    terms = cycle_schedule.TermSet(cycle_text, cycle_latent)
    model = model_lib.MultimodalMMDiT(config.model)
    options = options_lib.from_config(config)
    some = jax.jit(
      lambda p, b, d, s: cycle_vae.cycle_vae_loss(p, b, d, step=s, model=model, options=options, terms=terms)
    )
    loss, metrics = run(some, params, batch, draws, PARITY_STEP)
    skipped = {
      f'{name}_{what}' for name, on in zip(cycle_schedule.CYCLE_TERMS, terms) if not on for what in ('loss', 'weight')
    }
    self.assertEqual(set(metrics), set(every) - skipped)
    for name in set(metrics) - {'loss'}:
      np.testing.assert_allclose(metrics[name], every[name], rtol=1e-6, err_msg=name)
    expected = 0.3 * every['base_t2l_latent_loss'] + every['base_l2t_text_loss']
    if cycle_latent:
      expected += every['cycle_latent_weight'] * every['cycle_latent_loss']
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)

  def test_absent_mask_equals_all_true_mask(self):
    fn, config, _ = compiled_loss('epsilon', grad=False, cycle_latent_sampling='categorical')
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    batch['attention_mask'] = np.ones_like(batch['attention_mask'])
    unmasked = {k: v for k, v in batch.items() if k != 'attention_mask'}
    chex.assert_trees_all_close(
      run(fn, params, batch, draws, PARITY_STEP), run(fn, params, unmasked, draws, PARITY_STEP), atol=1e-6
    )

  def test_bx1xd_latent_equals_bxd(self):
    fn, config, _ = compiled_loss('epsilon', grad=False, cycle_latent_sampling='categorical')
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    flat = run(fn, params, batch, draws, PARITY_STEP)
    with_axis = run(fn, params, dict(batch, latent=batch['latent'][:, None, :]), draws, PARITY_STEP)
    chex.assert_trees_all_close(flat, with_axis, atol=1e-6)

  def test_non_finite_input_is_not_substituted(self):
    fn, config, _ = compiled_loss('epsilon', grad=False, cycle_latent_sampling='categorical')
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    batch['latent'][0, 0] = np.nan
    loss, metrics = run(fn, params, batch, draws, PARITY_STEP)
    self.assertTrue(np.isnan(float(loss)))
    self.assertTrue(np.isnan(float(metrics['base_t2l_latent_loss'])))

  def test_dropout_follows_the_config_and_the_key(self):
    fn, config, _ = compiled_loss('epsilon', grad=False, dropout=0.3)
    _, params = torch_pair()
    batch, draws = make_batch(), draws_for(config)
    _, first = run(fn, params, batch, draws, PARITY_STEP)
    _, same = run(fn, params, batch, dict(draws), PARITY_STEP)
    _, other = run(fn, params, batch, dict(draws, dropout_key=jax.random.key(7)), PARITY_STEP)
    chex.assert_trees_all_equal(first, same)
    # Dropout sits only in the latent head: the latent terms move, the base L2T text term does not.
    self.assertNotEqual(float(first['base_t2l_latent_loss']), float(other['base_t2l_latent_loss']))
    self.assertEqual(float(first['base_l2t_text_loss']), float(other['base_l2t_text_loss']))

  @parameterized.parameters(
    ('loss', 'cycle_latent_sampling', 'nucleus'),
    ('tokenizer', 'mask_token_id', 97),
    ('model', 'latent_parameterization', 'score'),
  )
  def test_bad_config_is_named(self, section, key, value):
    config = make_config()
    config[section][key] = value
    with pytest.raises(ValueError, match=key):
      config_lib.finalize(config)

  def test_bad_latent_shape_and_t_range_are_named(self):
    config = make_config()
    batch, draws = make_batch(), draws_for(config)
    model = model_lib.MultimodalMMDiT(config.model)
    with pytest.raises(ValueError, match='latent'):
      cycle_vae.cycle_vae_loss(
        {},
        dict(batch, latent=np.zeros((BATCH, 2, 8), np.float32)),
        draws,
        step=0,
        model=model,
        options=options_lib.from_config(config),
      )
    for bad in (dict(cycle_latent_t_min=0.5, cycle_latent_t_max=0.5), dict(latent_t_mode='half')):
      with pytest.raises(ValueError, match='latent_t'):
        config_lib.finalize(make_config(**bad))
