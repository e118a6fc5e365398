"""requirements.lock pins every dependency pyproject.toml declares, within the range declared there."""

import pathlib
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# The extras the main environment installs (CI, the README's commands); tpu and cuda get side
# environments of their own and data is optional, each pinned exactly in pyproject.toml itself. The test
# extra includes tracking and eval.
LOCKED_EXTRAS = ('reference', 'tracking', 'eval', 'test')


def locked_versions(text: str) -> dict[str, str]:
  pins = {}
  for number, line in enumerate(text.splitlines(), 1):
    line = line.split('#', 1)[0].strip()
    if not line:
      continue
    match = re.fullmatch(r'([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)', line)
    if match is None:
      raise ValueError(f'requirements.lock:{number}: {line!r} is not NAME==VERSION')
    name = canonicalize_name(match.group(1))
    if name in pins:
      raise ValueError(f'requirements.lock:{number}: {match.group(1)} is pinned twice')
    pins[name] = match.group(2)
  return pins


def declared_requirements(pyproject: dict) -> list[Requirement]:
  project = pyproject['project']
  texts = list(project['dependencies'])
  for extra in LOCKED_EXTRAS:
    texts += project['optional-dependencies'][extra]
  own = canonicalize_name(project['name'])
  return [r for r in map(Requirement, texts) if canonicalize_name(r.name) != own]


def disagreements(pins: dict[str, str], requirements: list[Requirement]) -> list[str]:
  problems = []
  for requirement in requirements:
    version = pins.get(canonicalize_name(requirement.name))
    if version is None:
      problems.append(f'{requirement.name} is not pinned in requirements.lock')
    elif not requirement.specifier.contains(version, prereleases=True):
      problems.append(f'requirements.lock pins {requirement.name}=={version}, outside {requirement}')
  return problems


def test_the_lock_pins_every_declared_dependency_within_its_range():
  pins = locked_versions((REPO / 'requirements.lock').read_text())
  requirements = declared_requirements(tomllib.loads((REPO / 'pyproject.toml').read_text()))
  assert len(requirements) > 15  # the scan sees pyproject's dependencies
  assert disagreements(pins, requirements) == []


def test_a_disagreement_is_found():
  requirements = [Requirement('jax>=0.10.2'), Requirement('pytest>=8'), Requirement('torch==2.13.0')]
  assert disagreements({'jax': '0.9.0', 'torch': '2.13.0'}, requirements) == [
    'requirements.lock pins jax==0.9.0, outside jax>=0.10.2',
    'pytest is not pinned in requirements.lock',
  ]
  with pytest.raises(ValueError, match='not NAME==VERSION'):
    locked_versions('jax>=0.10\n')
  with pytest.raises(ValueError, match='pinned twice'):
    locked_versions('jax==0.10.2\nJAX==0.10.2\n')
