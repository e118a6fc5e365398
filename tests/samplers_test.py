"""The L2T unmasking sampler and the T2L DDIM sampler, with stub models whose answers are known."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax import model as model_lib
from lgdlm_jax.evaluation import samplers
from lgdlm_jax.objective import diffusion

MASK_ID = 3
VOCAB = 40
FIRST_ROUND_ID = 10  # the schedule stub proposes token FIRST_ROUND_ID + i in round i


def tiny_config(**model_overrides):
  config = config_lib.default_config()
  config.model.update(
    vocab_size=VOCAB,
    hidden_size=32,
    n_blocks=1,
    cond_dim=32,
    max_seq_len=12,
    latent_dim=8,
    num_residual_streams=1,
    **model_overrides,
  )
  config.tokenizer.update(vocab_size=VOCAB, mask_token_id=MASK_ID)
  return config


def reference_counts(seq_len, steps):
  """The reference sampler's per-round decode counts, its loop transcribed (float64 numpy cosine)."""
  decoded, counts = 0, []
  for i in range(steps):
    target = int(seq_len * (1 - np.cos((i + 1) / steps * np.pi / 2)))
    masked = seq_len - decoded
    counts.append(0 if masked == 0 else min(max(1, target - decoded), masked))
    decoded += counts[-1]
  return counts


@pytest.mark.parametrize('seq_len,steps', [(32, 8), (128, 20), (12, 12), (5, 10), (1, 3), (64, 1), (100, 7)])
def test_unmask_counts_follow_the_reference_and_finish(seq_len, steps):
  counts = samplers.unmask_counts(seq_len, steps)
  expected = reference_counts(seq_len, steps)
  assert counts.sum() == seq_len
  np.testing.assert_array_equal(counts[:-1], expected[:-1])
  # The reference's last target rounds to S - 1, leaving a [MASK]; ours decodes what is left.
  assert counts[-1] == expected[-1] + seq_len - sum(expected)
  assert all(c >= 1 for c in counts[: min(steps, seq_len)])


class ScheduleStub(nn.Module):
  """L2T stub: in round i (text t = 1 - i/steps) proposes FIRST_ROUND_ID + i everywhere, most
  confidently at the left, so position p must end holding the id of the round that decoded it."""

  steps: int
  latent_dim: int = 8

  @nn.compact
  def __call__(self, tokens, latents, text_t, latent_t, attention_mask=None, deterministic=True):
    batch, seq_len = tokens.shape
    round_B = jnp.round((1.0 - text_t) * self.steps).astype(jnp.int32)
    peak_BxSxV = jnp.arange(VOCAB)[None, None, :] == (FIRST_ROUND_ID + round_B)[:, None, None]
    height_S = 10.0 - 0.1 * jnp.arange(seq_len)
    logits = jnp.where(peak_BxSxV, height_S[None, :, None], 0.0)
    return logits, jnp.zeros((batch, 1, self.latent_dim))


@pytest.mark.parametrize('seq_len,steps', [(12, 4), (12, 12), (5, 8), (30, 6)])
def test_l2t_decodes_in_schedule_order_and_never_rewrites(seq_len, steps):
  config = tiny_config()
  sample = jax.jit(
    functools.partial(
      samplers.sample_l2t, model=ScheduleStub(steps), config=config, seq_len=seq_len, steps=steps, temperature=0.0
    )
  )
  tokens = np.asarray(sample({}, jnp.zeros((3, 8)), jax.random.key(0)))
  round_of_position = np.repeat(np.arange(steps), samplers.unmask_counts(seq_len, steps))
  np.testing.assert_array_equal(tokens, np.broadcast_to(FIRST_ROUND_ID + round_of_position, (3, seq_len)))


def test_l2t_with_a_real_model_is_deterministic_for_a_seed_and_fully_decoded():
  config = tiny_config()
  config.tokenizer.vocab_size = VOCAB - 8  # a tokenizer smaller than the model: stay inside it
  model = model_lib.MultimodalMMDiT(config.model)
  params = model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32), jnp.zeros((1, 8)))['params']
  latents = jax.random.normal(jax.random.key(1), (4, 8))
  sample = jax.jit(
    functools.partial(samplers.sample_l2t, model=model, config=config, seq_len=12, steps=5, temperature=1.0)
  )
  first, again, other = (np.asarray(sample(params, latents, jax.random.key(seed))) for seed in (7, 7, 8))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert first.shape == (4, 12)
  assert not (first == MASK_ID).any()
  assert ((first >= 0) & (first < config.tokenizer.vocab_size)).all()


class TrueNoiseStub(nn.Module):
  """T2L stub that knows the clean latents: returns the exact target of the parameterization."""

  x0_BxD: np.ndarray
  parameterization: str

  @nn.compact
  def __call__(self, tokens, latents, text_t, latent_t, attention_mask=None, deterministic=True):
    schedule = diffusion.make_schedule('cosine')
    sqrt_abar, sqrt_one_minus_abar = diffusion.schedule_values(schedule, latent_t)
    sqrt_abar, sqrt_one_minus_abar = sqrt_abar[:, None], sqrt_one_minus_abar[:, None]
    x0 = jnp.asarray(self.x0_BxD)
    eps = (latents - sqrt_abar * x0) / sqrt_one_minus_abar
    output = {'epsilon': eps, 'x0': x0, 'v_param': sqrt_abar * eps - sqrt_one_minus_abar * x0}[self.parameterization]
    return jnp.zeros(tokens.shape + (VOCAB,)), output[:, None, :]


@pytest.mark.parametrize('parameterization', diffusion.PARAMETERIZATIONS)
@pytest.mark.parametrize('latent_t_mode,steps', [('random', 10), ('random', 1), ('full', 4)])
def test_ddim_with_the_true_noise_recovers_the_clean_latent(parameterization, latent_t_mode, steps):
  config = tiny_config(latent_parameterization=parameterization)
  config.loss.latent_t_mode = latent_t_mode
  x0 = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
  sample = jax.jit(
    functools.partial(samplers.sample_t2l, model=TrueNoiseStub(x0, parameterization), config=config, steps=steps)
  )
  recovered = sample({}, jnp.zeros((3, 12), jnp.int32), None, jax.random.key(0))
  # At t = 1, sqrt(abar) = 1.56e-5 divides float32 rounding of the epsilon path.
  tolerance = 2e-2 if latent_t_mode == 'full' and parameterization == 'epsilon' else 1e-4
  np.testing.assert_allclose(recovered, x0, atol=tolerance)


def test_t2l_starts_where_training_stopped():
  config = tiny_config()
  assert samplers.t2l_start_time(config) == pytest.approx(0.98)
  config.loss.latent_t_mode = 'full'
  assert samplers.t2l_start_time(config) == 1.0


def test_l2t_with_lengths_decodes_each_row_to_its_length_only():
  steps, seq_len, pad_id = 4, 12, 0
  config = tiny_config()
  lengths = np.array([3, 7, 12])
  sample = jax.jit(
    functools.partial(
      samplers.sample_l2t, model=ScheduleStub(steps), config=config, seq_len=seq_len, steps=steps, temperature=0.0
    )
  )
  tokens = np.asarray(sample({}, jnp.zeros((3, 8)), jax.random.key(0), lengths_B=jnp.asarray(lengths)))
  for row, length in zip(tokens, lengths):
    round_of_position = np.repeat(np.arange(steps), samplers.unmask_counts(length, steps))
    np.testing.assert_array_equal(row[:length], FIRST_ROUND_ID + round_of_position)
    assert (row[length:] == pad_id).all()
