"""How a config key is declared: once, with everything lgdlm_jax knows about it.

    Key('model.hidden_size', 256, POSITIVE, 'Width of the text and latent streams.',
        reference='model.hidden_size', summary=True)

A declaration holds the key's default, its rule (a check that raises ConfigError naming the key and
the value, e.g. `model.hidden_size=0: expected an integer >= 1`), a one-line help, why it may
change when a run resumes (empty: it may not), the reference YAML key it is read from, and the
reference's default where it differs from ours. lgdlm_jax.config.schema derives the default config,
validation, the resume check, the YAML reader's key maps and `--help_config` from them.
This module imports nothing from lgdlm_jax but errors, so every room may read it.
"""

from collections.abc import Callable, Iterable, Mapping
import dataclasses
import math
from typing import Any

from lgdlm_jax.errors import ConfigError

Rule = Callable[[str, Any], None]


def _bad(key: str, value: Any, why: str) -> ConfigError:
  return ConfigError(f'{key}={value!r}: {why}')


def integer(minimum: int) -> Rule:
  def check(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise _bad(key, value, f'expected an integer >= {minimum}')

  return check


def number(
  minimum: float = -math.inf, maximum: float = math.inf, *, below_max: bool = False, optional: bool = False
) -> Rule:
  """A finite real number in [minimum, maximum] (or [minimum, maximum) with below_max); None if optional."""
  upper = f'< {maximum}' if below_max else f'<= {maximum}'
  span = f'in [{minimum}, {maximum}{")" if below_max else "]"}' if math.isfinite(maximum) else f'>= {minimum}'

  def check(key: str, value: Any) -> None:
    if value is None and optional:
      return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise _bad(key, value, f'expected a finite number {span}' + (' or None' if optional else ''))
    if value < minimum or (value >= maximum if below_max else value > maximum):
      raise _bad(key, value, f'expected a number {span}' if math.isfinite(minimum) else f'expected {upper}')

  return check


def boolean(key: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise _bad(key, value, 'expected True or False')


def string(key: str, value: Any) -> None:
  if not isinstance(value, str):
    raise _bad(key, value, 'expected a string')


def multiple_of(step: int) -> Rule:
  def check(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < step or value % step:
      raise _bad(key, value, f'expected a positive multiple of {step}')

  return check


def step_range(key: str, value: Any) -> None:
  """(start, stop): integers with 0 <= start <= stop; (0, 0) or any empty range = none."""
  if (
    not isinstance(value, (tuple, list))
    or len(value) != 2
    or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    or not 0 <= value[0] <= value[1]
  ):
    raise _bad(key, value, 'expected (start, stop): two integers with 0 <= start <= stop')


@dataclasses.dataclass(frozen=True)
class OneOf:
  """The rule of a key that takes one of a few names (or None too, if optional)."""

  values: tuple[str, ...]
  optional: bool = False

  def __call__(self, key: str, value: Any) -> None:
    if self.optional and value is None:
      return
    if value not in self.values:
      raise _bad(key, value, f'expected {"None or " if self.optional else ""}one of {", ".join(self.values)}')


def one_of(*values: str, optional: bool = False) -> OneOf:
  return OneOf(values, optional)


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
_UNSET = object()


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key, declared once.

  name: 'section.key' (or 'key' at the top level).
  default: our default; None only for a OneOf key (a string placeholder: the key may be set later).
  rule: validates a value; raises ConfigError naming the key and the value.
  help: one line for `--help_config`.
  resume: why the key may change between the runs of one workdir; '' = a change is refused.
  reference: the reference YAML key read into this one ('' = the reference has none).
  reference_default: the reference's value when its YAML leaves `reference` out, where it differs from ours.
  lower_case: the reference lower-cases the value before comparing; finalize does too.
  aliases: other spellings of a choice the reference accepts -> ours.
  summary: part of the short description of a run (bench's result lines).
  """

  name: str
  default: Any
  rule: Rule
  help: str
  resume: str = ''
  reference: str = ''
  reference_default: Any = _UNSET
  lower_case: bool = False
  aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
  summary: bool = False

  @property
  def has_reference_default(self) -> bool:
    return self.reference_default is not _UNSET


def declare(keys: Iterable[Key]) -> dict[str, Key]:
  """{name: Key} in declaration order.

  A key declared twice, two keys read from one reference key, or a None default without choices is
  a ValueError naming the key.
  """
  declared: dict[str, Key] = {}
  references: dict[str, str] = {}
  for key in keys:
    if key.name in declared:
      raise ValueError(f'config key {key.name} is declared twice')
    if key.reference and references.setdefault(key.reference, key.name) != key.name:
      raise ValueError(
        f'config keys {references[key.reference]} and {key.name} are both read from the reference key {key.reference}'
      )
    if key.default is None and not isinstance(key.rule, OneOf):
      raise ValueError(f'config key {key.name}: a None default needs a one_of rule (its type)')
    declared[key.name] = key
  return declared
