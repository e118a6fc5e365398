"""A latentDLM pretraining run continued in lgdlm_jax mid-schedule, with its optimizer state, lands where the
PyTorch run itself lands.

The twin of latentDLM's stable trainer (lgdlm_jax.reference.stable_trainer: frozen groups, torch's AdamW with its
per-tensor step) trains N steps of a sequential schedule and saves `RUN/latest/checkpoint.pt` the reference's way
(`model.*` and the trainer's `text_noise_schedule.*` buffers, the optimizer state, a pickled TrainingState); the
converter turns it into a converted directory; lgdlm_jax continues M steps from it (init_from with
init_from_optimizer) while the twin continues itself, on the same batches and draws. The hand-over falls inside
`l2t`, after the latent group was frozen for a step, so the tensors' update counts differ, and the continuation
enters `t2l`. float32, highest matmul precision.
"""

import dataclasses

import flax
import jax
import numpy as np
import pytest
import torch

import convert_torch_weights
from lgdlm_jax import config as config_lib
from lgdlm_jax import errors
from lgdlm_jax import model as model_lib
from lgdlm_jax.checkpoints import init_from
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.checkpoints import weight_sources as sources
from lgdlm_jax.convert import converted
from lgdlm_jax.convert import mapping
from lgdlm_jax.convert import moments as moments_lib
from lgdlm_jax.convert import update_counts
from lgdlm_jax.reference import checkpoints as reference_checkpoints
from lgdlm_jax.training import freezing
from lgdlm_jax.training import modes as modes_lib
from lgdlm_jax.training import optimizer as optimizer_lib
from lgdlm_jax.training import sharding
from lgdlm_jax.training import step as train
from tests.helpers import models
from tests.helpers import params as params_lib

SCHEDULE = (('unconditional', 2), ('l2t', 2), ('t2l', 2))
N, M = 3, 3  # steps before the hand-over (inside l2t), and after it (the rest of l2t, then t2l)
BATCH, SEQ_LEN = 4, 12
MASK_TOKEN_ID = 3
MODE_CODES = {'unconditional': 0, 'l2t': 1, 't2l': 2}
TOL = 1e-5  # relative, per parameter array: max |jax - torch| / max |torch|


def make_config(tmp_path=None, **model_overrides):
  config = config_lib.default_config()
  config.model.update(
    dict(
      models.tiny_config(
        **{'hidden_size': 32, 'n_blocks': 1, 'cond_dim': 32, 'max_seq_len': SEQ_LEN, 'num_residual_streams': 1}
        | model_overrides
      ).items()
    )
  )
  config.tokenizer.update(vocab_size=config.model.vocab_size, mask_token_id=MASK_TOKEN_ID, pad_token_id=0)
  config.loss.update(loss_type='sequential', latent_loss_weight=0.5)
  config.training.update(
    train_batch_size=BATCH,
    sequential_schedule=SCHEDULE,
    num_train_steps=N + M,
    lr_schedule='cosine',
    warmup_steps=2,
    eval_every=0,
  )
  # eps 1e-6 as in tests/freezing_test.py: Adam's first update of a near-zero gradient is float32 noise otherwise.
  config.optimizer.update(lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1, grad_clip_norm=0.5)
  if tmp_path is not None:
    config.update(init_from=str(tmp_path / 'converted'), init_from_optimizer=True)
  return config_lib.finalize(config)


def reference_mode(step: int) -> str:
  """The reference's sequential rule: the first entry whose running total of steps exceeds step mod the total."""
  r, total = step % sum(n for _, n in SCHEDULE), 0
  for mode, n in SCHEDULE:
    total += n
    if total > r:
      return mode
  raise AssertionError


def make_batch(config, step: int) -> dict[str, np.ndarray]:
  tokens, latents, _, _, mask = models.make_inputs(config.model, batch=BATCH, seq_len=SEQ_LEN, seed=20 + step)
  return dict(input_ids=tokens, attention_mask=mask, latent=latents)


def twin_step(trainer, config, step: int, rng) -> None:
  batch = make_batch(config, step)
  draws = modes_lib.draws_for(jax.random.fold_in(rng, step), batch, config.model.latent_dim)
  torch_batch = dict(
    input_ids=torch.tensor(batch['input_ids']).long(),
    attention_mask=torch.tensor(batch['attention_mask']),
    latent=torch.tensor(batch['latent']),
  )
  torch_draws = {k: torch.tensor(np.asarray(draws[k])) for k in ('t_text', 't_latent', 'mask_uniform', 'noise')}
  lr = float(optimizer_lib.learning_rate_schedule(config)(step))
  trainer.step(torch_batch, torch_draws, reference_mode(step), lr)


@pytest.mark.slow  # two compiled train steps (l2t, t2l) and N + M twin steps
def test_latentdlm_run_continued_mid_schedule_matches_the_twin_continuing(tmp_path, capsys):
  config = make_config(tmp_path)
  model_config = config.model
  rng = jax.random.key(2)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # torch's and XLA's threads fight for the 2 cores otherwise
  try:
    torch_model, _ = models.build_pair(model_config, seed=5)
    trainer = models.stable_twin(config, torch_model, MASK_TOKEN_ID)
    for step in range(N):
      twin_step(trainer, config, step, rng)
    # latentDLM saves after N steps with TrainingState.step = N, its trainer's buffers beside `model.*`.
    reference_checkpoints.save_latentdlm_checkpoint(
      tmp_path / 'ref_run' / 'latest',
      reference_checkpoints.LatentDLMTrainer(torch_model),
      trainer.optimizer,
      step=N,
      config=None,
    )
    for step in range(N, N + M):
      twin_step(trainer, config, step, rng)
  finally:
    torch.set_num_threads(threads)

  assert (
    convert_torch_weights.main(['--input', str(tmp_path / 'ref_run'), '--output', str(tmp_path / 'converted')]) == 0
  )
  out = capsys.readouterr().out
  assert "set aside the trainer's buffers text_noise_schedule.log_prior" in out
  assert 'different update counts (2, 3): kept per tensor' in out
  initial = init_from.load(config, str(tmp_path / 'jax_run'))
  assert '2 to 3 updates per tensor' in init_from.describe(initial)
  model = model_lib.MultimodalMMDiT(model_config)
  optimizer = optimizer_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config)
  fresh, shardings = train.create_sharded_state(config, model, optimizer, mesh, jax.random.key(0))
  fresh = jax.device_get(fresh)  # host copies, so that each state below gets buffers of its own to donate
  state = init_from.apply(initial, fresh, shardings)
  adam = state.opt_state[-1]
  assert (int(state.step), int(adam.count)) == (N, N)
  # The latent head sat out the l2t step: one update fewer than the text head.
  assert int(adam.unit_count['latent_head_3']['kernel']) == N - 1
  assert int(adam.unit_count['text_head']['kernel']) == N
  with jax.default_matmul_precision('highest'):
    programs = train.compile_steps(config, model, optimizer, mesh, shardings)[0]

    def continue_from(state):
      modes = []
      for step in range(N, N + M):
        state, metrics = programs.for_terms(programs.schedule.terms_at(step))(state, make_batch(config, step), rng)
        modes.append(int(metrics['mode']))
      return state, modes

    state, modes = continue_from(state)
    assert modes == [MODE_CODES[reference_mode(s)] for s in range(N, N + M)] == [1, 2, 2]
    errors_ = params_lib.relative_errors(jax.device_get(state.params), torch_model, model_config)
    assert max(errors_.values()) <= TOL, sorted(errors_.items(), key=lambda kv: -kv[1])[:5]

    # The comparison can fail: every tensor continuing from the one count N lands elsewhere.
    one_count = dataclasses.replace(
      initial.weights, moments=dataclasses.replace(initial.weights.moments, unit_updates=None)
    )
    one, _ = continue_from(init_from.apply(init_from.Initial(one_count, with_optimizer=True), fresh, shardings))
  errors_ = params_lib.relative_errors(jax.device_get(one.params), torch_model, model_config)
  assert max(errors_.values()) > 100 * TOL


def test_counts_that_differ_within_one_tensor_are_an_error_naming_it():
  model_config = make_config().model
  counts = jax.tree_util.tree_map(lambda x: np.full(x.shape, 4, np.int32), params_lib.random_params(model_config, 0))
  flat = flax.traverse_util.flatten_dict(counts)
  assert update_counts.to_units(counts)['text_head']['kernel'] == 4
  flat[('mmdit', 'blocks', 'feedforwards_0', 'ff_2', 'kernel')][0, 1, 2] = 5
  with pytest.raises(
    mapping.ConversionError, match=r'update counts of mmdit\.blocks\.0\.feedforwards\.0\.ff\.2\.weight'
  ):
    update_counts.to_units(flax.traverse_util.unflatten_dict(flat))


def test_per_unit_counts_round_trip_through_torch():
  """A pretraining run's AdamW state -> torch's optimizer state dict (each tensor its own step) -> back."""
  model_config = make_config(n_blocks=2).model
  params = params_lib.random_params(model_config, 0)
  adam = freezing.freezable_adamw(lambda count: 1e-3, 0.9, 0.99, 1e-6, 0.1)
  unit_updates = jax.tree_util.tree_map(lambda c: np.full(c.shape, 7, np.int32), adam.init(params).unit_count)
  unit_updates['latent_head_3']['kernel'] = np.int32(5)
  unit_updates['mmdit']['blocks']['feedforwards_1']['ff_2']['kernel'] = np.array([[[7]], [[6]]], np.int32)
  unit_updates['text_encoder']['token_embed']['embedding'] = np.int32(0)
  mu, nu = (
    params_lib.random_params(model_config, 1),
    jax.tree_util.tree_map(np.abs, params_lib.random_params(model_config, 2)),
  )
  for tree in (mu, nu):  # torch keeps no state for a tensor without updates: its moments are zero
    tree['text_encoder']['token_embed']['embedding'][...] = 0
  opt_state = moments_lib.into_opt_state(adam.init(params), moments_lib.AdamMoments(7, mu, nu, {}, unit_updates), 9)
  assert int(opt_state.count) == 9
  held = moments_lib.AdamMoments(7, opt_state.mu, opt_state.nu, {}, opt_state.unit_count)

  torch_state = moments_lib.to_torch(held, model_config, lr=1e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1)
  names = mapping.reference_parameter_order(model_config)
  steps = {names[i]: int(s['step']) for i, s in torch_state['state'].items()}
  assert steps['latent_head.3.weight'] == 5 and steps['mmdit.blocks.1.feedforwards.1.ff.2.weight'] == 6
  assert steps['mmdit.blocks.0.feedforwards.1.ff.2.weight'] == 7 and 'text_encoder.token_embed.weight' not in steps
  state_dict = {name: mapping.flax_to_torch(params, model_config)[name] for name in names}
  back = moments_lib.from_torch(torch_state, state_dict, model_config)
  assert back.updates == 7
  for want, got in ((unit_updates, back.unit_updates), (mu, back.mu), (nu, back.nu)):
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


def test_init_from_refuses_more_updates_than_steps(tmp_path):
  config = make_config(tmp_path)
  params = params_lib.random_params(config.model, 0)
  unit_updates = jax.tree_util.tree_map(lambda x: np.full((), 2, np.int32), params)
  unit_updates['mmdit']['blocks'] = jax.tree_util.tree_map(
    lambda x: np.full((x.shape[0],) + (1,) * (x.ndim - 1), 4, np.int32), params['mmdit']['blocks']
  )
  moments = moments_lib.AdamMoments(4, params, params, {}, unit_updates)
  converted.save(str(tmp_path / 'converted'), params, config.model, {'steps_done': 3}, moments)
  with pytest.raises(errors.InputError, match='has had 4 updates, more than the 3 steps it is at'):
    init_from.load(config, str(tmp_path / 'run'))


def test_a_pretraining_workdir_is_a_source_with_its_unit_counts(tmp_path):
  """init_from of another lgdlm_jax pretraining run: its per-unit counts come back as they were saved."""
  config = make_config()
  params = params_lib.random_params(config.model, 0)
  optimizer = optimizer_lib.make_optimizer(config)
  opt_state = optimizer.init(params)
  unit_updates = jax.tree_util.tree_map(lambda c: np.full(c.shape, 5, np.int32), opt_state[-1].unit_count)
  unit_updates['latent_head_3']['bias'] = np.int32(3)
  saved = moments_lib.AdamMoments(5, params, params, {}, unit_updates)
  zero = np.zeros((), np.int32)
  state = train.TrainState(
    step=np.int32(5),
    params=params,
    opt_state=moments_lib.into_opt_state(opt_state, saved, 5),
    nonfinite_steps=zero,
    consecutive_nonfinite=zero,
  )
  manager = checkpoint.make_manager(str(tmp_path / 'source'), config)
  checkpoint.save(manager, 5, state)
  manager.wait_until_finished()
  manager.close()
  (tmp_path / 'source' / 'config.json').write_text(config.to_json())
  weights = sources.read(str(tmp_path / 'source'), model_config=config.model, with_moments=True)
  assert (weights.steps_done, weights.moments.updates) == (5, 5)
  jax.tree_util.tree_map(np.testing.assert_array_equal, weights.moments.unit_updates, unit_updates)
