"""The objective's one pass plan: which model passes run for a set of cycle terms, in which order.

    plan = pass_plan(options, terms)   # rounds of PlannedPass; each round is one joint model call

The joint loss (lgdlm_jax.objective.cycle_vae), the pass-by-pass gradient (lgdlm_jax.training.gradients)
and the benchmark's FLOP count (lgdlm_jax.bench) all read this plan, so they run the same passes.
"""

from typing import NamedTuple

from lgdlm_jax.objective.cycle_schedule import TermSet
from lgdlm_jax.objective.options import ObjectiveOptions

# term -> the name of its value in the metrics.
VALUE_NAMES = {
  'base_t2l': 'base_t2l_latent_loss',
  'base_l2t': 'base_l2t_text_loss',
  'cycle_text': 'cycle_text_loss',
  'cycle_latent': 'cycle_latent_loss',
}


class PlannedPass(NamedTuple):
  """One model pass of the objective: the loss term that reads it, and whether it reads its text logits.

  A pass that reads its text logits is an L2T pass (all-[MASK] text, text t = 1, its latent the
  condition); the others are T2L passes (clean text, a noised latent at its t).
  """

  term: str
  text_logits: bool

  @property
  def value(self) -> str:
    """The name of this pass's term in the metrics (e.g. base_t2l_latent_loss)."""
    return VALUE_NAMES[self.term]

  @property
  def is_base(self) -> bool:
    """Round 1: reads the batch only; the cycle passes read round 1's outputs."""
    return self.term.startswith('base_')


Plan = tuple[tuple[PlannedPass, ...], ...]


def pass_plan(options: ObjectiveOptions, terms: TermSet | None = None) -> Plan:
  """The passes the objective runs for `terms` (default: the configured ones), round by round.

  Round 1: base T2L (clean text -> noised latent) and base L2T (all-[MASK] text, clean latent).
  Round 2, when a cycle term runs: cycle text (L2T on round 1's x0 estimate) and cycle latent (T2L
  on round 1's pseudo tokens).
  """
  terms = options.cycle.configured_terms() if terms is None else terms
  round1 = (PlannedPass('base_t2l', False), PlannedPass('base_l2t', True))
  round2 = ((PlannedPass('cycle_text', True),) if terms.cycle_text else ()) + (
    (PlannedPass('cycle_latent', False),) if terms.cycle_latent else ()
  )
  return (round1, round2) if round2 else (round1,)


def in_order(plan: Plan) -> tuple[PlannedPass, ...]:
  """The plan's passes one after the other, round by round."""
  return tuple(p for round_ in plan for p in round_)
