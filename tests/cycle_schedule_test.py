"""Which cycle terms run at which step (lgdlm_jax.objective.cycle_schedule): warmups, ramps, cycle_every and
gradient accumulation, all decided on the host."""

import itertools

import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax.objective import cycle_schedule
from lgdlm_jax.objective import options as options_lib
from lgdlm_jax.objective import plan as plan_lib
from lgdlm_jax.objective.cycle_schedule import ALL_TERMS
from lgdlm_jax.objective.cycle_schedule import BASE_ONLY
from lgdlm_jax.objective.cycle_schedule import TermSet

TEXT_ONLY, LATENT_ONLY = TermSet(True, False), TermSet(False, True)


def schedule(cycle_every=1, accumulation=1, **loss):
  config = config_lib.default_config()
  config.loss.update(dict(dict(cycle_text_weight=1.0, cycle_latent_weight=0.5), **loss), cycle_every=cycle_every)
  config.training.gradient_accumulation_steps = accumulation
  return cycle_schedule.from_config(config_lib.finalize(config))


@pytest.mark.parametrize(
  'base,warmup,ramp', [(1.3, 2, 4), (0.7, 3, 0), (2.0, 0, 0), (0.0, 0, 5), (1.0, 0, 3), (0.5, -2, -1)]
)
def test_host_activity_is_exactly_where_the_ramped_weight_is_positive(base, warmup, ramp):
  steps = list(range(12)) + [1000]
  traced = [float(cycle_schedule.ramp_weight(s, base, warmup, ramp)) > 0.0 for s in steps]
  assert [cycle_schedule.ramp_is_positive(s, base, warmup, ramp) for s in steps] == traced


def test_warmups_and_ramps_switch_each_term_on_where_its_weight_leaves_zero():
  # Text: warmup 2, ramp 3 -> weight 0 at steps 0-2 (step 2 is the ramp's 0), > 0 from step 3.
  # Latent: warmup 4, ramp 0 -> full weight from step 4.
  s = schedule(cycle_text_warmup_steps=2, cycle_text_ramp_steps=3, cycle_latent_warmup_steps=4)
  assert [s.terms_at(step) for step in range(6)] == [BASE_ONLY] * 3 + [TEXT_ONLY] + [ALL_TERMS] * 2
  assert s.term_sets_between(0, 10) == {BASE_ONLY: 3, TEXT_ONLY: 1, ALL_TERMS: 6}
  assert list(s.term_sets_between(0, 10)) == [BASE_ONLY, TEXT_ONLY, ALL_TERMS]  # order of first use


def test_a_zero_base_weight_never_runs_its_term():
  s = schedule(cycle_text_weight=0.0)
  assert {s.terms_at(step) for step in range(20)} == {LATENT_ONLY}
  assert s.configured_terms() == LATENT_ONLY
  assert schedule(cycle_text_weight=0.0, cycle_latent_weight=0.0).term_sets_between(0, 50) == {BASE_ONLY: 50}


def test_cycle_every_runs_the_cycle_terms_on_every_nth_update_only():
  s = schedule(cycle_every=4)
  ran = [step for step in range(13) if s.terms_at(step) == ALL_TERMS]
  assert ran == [0, 4, 8, 12]
  assert s.term_sets_between(0, 100) == {ALL_TERMS: 25, BASE_ONLY: 75}


def test_every_micro_batch_of_one_update_runs_the_same_terms():
  # 3 micro-batches per update, cycle terms on every 2nd update; the text warmup (4) ends inside
  # update 1 (micro-batches 3-5), which cycle_every skips; latent from micro-batch 7 (update 2).
  s = schedule(cycle_every=2, accumulation=3, cycle_text_warmup_steps=4, cycle_latent_warmup_steps=7)
  per_update = [[s.terms_at(step) for step in range(u * 3, u * 3 + 3)] for u in range(6)]
  for update in per_update:
    assert len(set(update)) == 1, update
  assert [u[0] for u in per_update] == [BASE_ONLY, BASE_ONLY, ALL_TERMS, BASE_ONLY, ALL_TERMS, BASE_ONLY]


def test_a_term_whose_warmup_ends_inside_an_update_runs_on_all_its_micro_batches():
  s = schedule(accumulation=4, cycle_text_warmup_steps=6, cycle_latent_weight=0.0)
  # Update 1 = micro-batches 4-7: the weight is 0 at 4 and 5 and positive at 6 and 7.
  assert [s.terms_at(step) for step in range(4, 8)] == [TEXT_ONLY] * 4
  weights = [float(s.weights(step)['cycle_text']) for step in range(4, 8)]
  assert weights == [0.0, 0.0, 1.0, 1.0]  # the reference's weight per micro-batch, 0 included


def test_term_set_names():
  assert [t.name for t in (BASE_ONLY, TEXT_ONLY, LATENT_ONLY, ALL_TERMS)] == [
    'base',
    'base+cycle_text',
    'base+cycle_latent',
    'base+cycle_text+cycle_latent',
  ]


@pytest.mark.parametrize('terms', [TermSet(*t) for t in itertools.product((False, True), repeat=2)])
def test_the_pass_plan_holds_the_passes_of_the_terms_that_run(terms):
  plan = plan_lib.pass_plan(options_lib.from_config(config_lib.finalize(config_lib.default_config())), terms)
  assert [p.term for p in plan[0]] == ['base_t2l', 'base_l2t']
  expected = [name for name, on in zip(cycle_schedule.CYCLE_TERMS, terms) if on]
  assert [p.term for round_ in plan[1:] for p in round_] == expected
  assert len(plan) == (2 if expected else 1)  # no empty second model call
  assert all(p.text_logits == (p.term in ('base_l2t', 'cycle_text')) for round_ in plan for p in round_)


def test_cycle_every_is_validated():
  config = config_lib.default_config()
  config.loss.cycle_every = 0
  with pytest.raises(ValueError, match='loss.cycle_every=0'):
    config_lib.finalize(config)
