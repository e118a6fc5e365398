"""When each cycle term of the objective runs, and with what weight.

    schedule = cycle_schedule.from_config(config)
    terms = schedule.terms_at(step)          # on the host: a TermSet, the program this step runs
    weight = ramp_weight(step, base, warmup, ramp)   # inside the step: a traced step is fine

The two base terms (T2L, L2T) run at every step. Each cycle term (cycle-text, cycle-latent) runs
only where its ramped weight is above 0 and only on the optimizer updates `loss.cycle_every`
selects; a step that skips a term does not compute it at all. The choice is made on the host from
the step number, and the train step is compiled once per TermSet it meets (at most four, usually
one or two: e.g. 'base' during the warmups, then 'base+cycle_text+cycle_latent').
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

CYCLE_TERMS = ('cycle_text', 'cycle_latent')


class TermSet(NamedTuple):
  """The cycle terms one program computes; the base T2L and base L2T terms always run."""

  cycle_text: bool
  cycle_latent: bool

  @property
  def name(self) -> str:
    """'base', 'base+cycle_text', 'base+cycle_latent' or 'base+cycle_text+cycle_latent'."""
    return '+'.join(['base'] + [term for term, on in zip(CYCLE_TERMS, self) if on])


BASE_ONLY = TermSet(False, False)
ALL_TERMS = TermSet(True, True)


def ramp_weight(step: int | jax.Array | None, base: float, warmup_steps: int, ramp_steps: int) -> jax.Array:
  """The reference's cycle-weight schedule; `step` may be a traced integer. float32 scalar.

  0 for step < warmup; base * min(1, (step - warmup) / ramp) after (base at once if ramp = 0), so
  the first step after the warmup still weighs 0; always 0 if base <= 0; the base itself when step
  is None (as the reference).
  """
  if step is None:
    return jnp.asarray(base, jnp.float32)
  if base <= 0.0:
    return jnp.zeros((), jnp.float32)
  warmup_steps, ramp_steps = max(0, int(warmup_steps)), max(0, int(ramp_steps))
  # Subtract in integers so that large step counts lose no precision before the division.
  since_warmup = jnp.asarray(step).astype(jnp.int32) - warmup_steps
  progress = 1.0 if ramp_steps == 0 else jnp.minimum(1.0, since_warmup.astype(jnp.float32) / ramp_steps)
  return jnp.where(since_warmup < 0, 0.0, base * progress).astype(jnp.float32)


def ramp_is_positive(step: int, base: float, warmup_steps: int, ramp_steps: int) -> bool:
  """Whether ramp_weight(step, ...) > 0, in Python on the host (no device round trip per step)."""
  warmup_steps, ramp_steps = max(0, int(warmup_steps)), max(0, int(ramp_steps))
  return base > 0.0 and step >= warmup_steps and (ramp_steps == 0 or step > warmup_steps)


@dataclasses.dataclass(frozen=True)
class CycleSchedule:
  """The cycle terms' base weights, warmups and ramps (in micro-batches), `loss.cycle_every`, and the
  micro-batches per optimizer update (training.gradient_accumulation_steps)."""

  text_weight: float
  text_warmup_steps: int
  text_ramp_steps: int
  latent_weight: float
  latent_warmup_steps: int
  latent_ramp_steps: int
  cycle_every: int
  micro_batches_per_update: int

  def configured_terms(self) -> TermSet:
    """The terms with a base weight above 0: what a step with a traced step number computes."""
    return TermSet(self.text_weight > 0.0, self.latent_weight > 0.0)

  def weights(self, step: int | jax.Array | None) -> dict[str, jax.Array]:
    """{'cycle_text': w, 'cycle_latent': w}: each ramped weight at `step` (None = the base weights)."""
    return dict(
      cycle_text=ramp_weight(step, self.text_weight, self.text_warmup_steps, self.text_ramp_steps),
      cycle_latent=ramp_weight(step, self.latent_weight, self.latent_warmup_steps, self.latent_ramp_steps),
    )

  def terms_at(self, step: int) -> TermSet:
    """The cycle terms the micro-batch `step` (a host int, counted from 0) computes.

    Every micro-batch of one optimizer update runs the same terms: update u = step // A (A =
    micro-batches per update) runs the cycle terms only if u % cycle_every == 0, and each of them
    only if its ramped weight is above 0 at the update's last micro-batch (the weights never
    decrease, so that is where a term first counts within the update).
    """
    accumulation = self.micro_batches_per_update
    update = step // accumulation
    if update % self.cycle_every:
      return BASE_ONLY
    last = update * accumulation + accumulation - 1
    return TermSet(
      ramp_is_positive(last, self.text_weight, self.text_warmup_steps, self.text_ramp_steps),
      ramp_is_positive(last, self.latent_weight, self.latent_warmup_steps, self.latent_ramp_steps),
    )

  def term_sets_between(self, start: int, stop: int) -> dict[TermSet, int]:
    """{term set: micro-batches in [start, stop) that run it}, in order of first use: the train-step
    programs a run over those steps compiles, and how often each runs."""
    counts: dict[TermSet, int] = {}
    for step in range(start, stop):
      terms = self.terms_at(step)
      counts[terms] = counts.get(terms, 0) + 1
    return counts


def from_config(config: ml_collections.ConfigDict) -> CycleSchedule:
  loss = config.loss
  return CycleSchedule(
    text_weight=loss.cycle_text_weight,
    text_warmup_steps=loss.cycle_text_warmup_steps,
    text_ramp_steps=loss.cycle_text_ramp_steps,
    latent_weight=loss.cycle_latent_weight,
    latent_warmup_steps=loss.cycle_latent_warmup_steps,
    latent_ramp_steps=loss.cycle_latent_ramp_steps,
    cycle_every=loss.cycle_every,
    micro_batches_per_update=config.training.gradient_accumulation_steps,
  )
