"""The layout's rules, checked on the source: which room may import which, and that every config key
is declared once and every key the package reads is declared and read without a second default."""

import ast
import pathlib

import ml_collections
import pytest

from lgdlm_jax import config as config_lib
from lgdlm_jax.config.declare import POSITIVE
from lgdlm_jax.config.declare import Key
from lgdlm_jax.config.declare import declare

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'lgdlm_jax'

# room -> the rooms it may import (itself always). Rooms are the package's first-level names; a room
# not listed here is an entry point or a shared leaf (cli, console), which may import any room. A
# package's __main__ is an entry point of its own (`python -m lgdlm_jax.convert`), not part of its room.
ALLOWED = {
  'errors': set(),
  'text': {'errors'},
  'config': {'errors', 'text'},
  'model': {'config', 'errors'},
  'objective': {'model', 'config', 'errors'},
  'data': {'config', 'errors', 'text'},
  'evaluation': {'model', 'objective', 'config', 'errors', 'text'},
  'convert': {'model', 'objective', 'config', 'errors', 'reference'},
  # The PyTorch twins (the `reference` extra): imported by convert --verify, the tests and the benchmarks only.
  'reference': {'model', 'objective', 'config', 'errors'},
  'checkpoints': {'convert', 'data', 'model', 'config', 'errors', 'text'},
  'training': {'objective', 'data', 'evaluation', 'checkpoints', 'model', 'config', 'errors', 'text', 'console'},
}
# The entry points (python -m ...): no room imports them.
ENTRY_POINTS = {'main', 'sample', 'bench', 'evaluate', 'prepare_data', 'plot', 'convert.__main__'}
FORBIDDEN = {'*': ENTRY_POINTS, 'evaluation': {'training'}}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(tree: ast.AST, module: str, known: set[str]) -> set[str]:
  """lgdlm_jax modules a module imports, anywhere in it (function-level imports too)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name.startswith('lgdlm_jax'))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('lgdlm_jax'):
      for alias in node.names:
        candidate = f'{node.module}.{alias.name}'
        found.add(candidate if candidate in known else node.module)
  found.discard(module)
  return found


def import_graph() -> dict[str, set[str]]:
  paths = sorted(PACKAGE.rglob('*.py'))
  known = {module_name(p) for p in paths}
  return {module_name(p): imported_modules(ast.parse(p.read_text()), module_name(p), known) for p in paths}


def room(module: str) -> str:
  parts = module.split('.')
  if parts[-1] == '__main__':
    return '.'.join(parts[1:])
  return parts[1] if len(parts) > 1 else parts[0]


def arrow_violations(graph: dict[str, set[str]]) -> list[str]:
  problems = []
  for module, imports in graph.items():
    here = room(module)
    for target in imports:
      there = room(target)
      if there == here or there == 'lgdlm_jax':
        continue
      if here in ALLOWED and there not in ALLOWED[here]:
        problems.append(f'{module} imports {target}: {here} may import only {sorted(ALLOWED[here])}')
      if there in FORBIDDEN['*'] | FORBIDDEN.get(here, set()):
        problems.append(f'{module} imports {target}, which {here} must not import')
  return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The import cycles (strongly connected components of more than one module, or a self-import)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  found: list[list[str]] = []

  def visit(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for target in graph.get(node, ()):
      if target not in index:
        visit(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def test_arrows_point_down():
  assert arrow_violations(import_graph()) == []


def test_no_import_cycles():
  assert cycles(import_graph()) == []


def _imports_and_sys_path(path: pathlib.Path) -> tuple[set[str], bool]:
  """(every module and name a file imports, whether it touches sys.path)."""
  found, sys_path = set(), False
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.update([node.module] + [f'{node.module}.{alias.name}' for alias in node.names])
    elif isinstance(node, ast.Attribute) and _chain(node) == ['sys', 'path']:
      sys_path = True
  return found, sys_path


def test_tests_share_helpers_not_test_modules_and_nothing_patches_sys_path():
  repo = PACKAGE.parent
  scripts = sorted((repo / 'tests').rglob('*.py')) + sorted((repo / 'benchmarks').rglob('*.py'))
  assert len(scripts) > 40
  problems = []
  for path in scripts:
    where = path.relative_to(repo)
    imports, sys_path = _imports_and_sys_path(path)
    tests_imported = {m for m in imports if m == 'tests' or m.startswith('tests.')}
    if where.parts[0] == 'benchmarks' and tests_imported:
      problems.append(f'{where} imports {sorted(tests_imported)}: benchmarks must not import tests')
    test_modules = {m for m in tests_imported if m.endswith('_test')}
    if test_modules:
      problems.append(f'{where} imports the test modules {sorted(test_modules)}: share code through tests/helpers')
    if sys_path:
      problems.append(f'{where} patches sys.path: run it as python3 -m from the repository root')
  assert problems == []


def test_the_checks_catch_a_wrong_arrow_and_a_cycle():
  graph = {
    'lgdlm_jax.model.mmdit': {'lgdlm_jax.data.pipeline'},
    'lgdlm_jax.objective.diffusion': {'lgdlm_jax.training.step'},
    'lgdlm_jax.evaluation.samplers': {'lgdlm_jax.objective.cycle_vae'},
    'lgdlm_jax.bench': {'lgdlm_jax.main'},
    'lgdlm_jax.objective.cycle_vae': {'lgdlm_jax.training.step'},
    'lgdlm_jax.training.step': {'lgdlm_jax.objective.cycle_vae'},
    'lgdlm_jax.convert.exporters': {'lgdlm_jax.checkpoints.weight_sources'},
    'lgdlm_jax.convert.__main__': {'lgdlm_jax.checkpoints.weight_sources'},  # an entry point may
    'lgdlm_jax.sample': {'lgdlm_jax.convert.__main__'},
  }
  problems = arrow_violations(graph)
  assert len(problems) == 6, problems
  assert cycles(graph) == [['lgdlm_jax.objective.cycle_vae', 'lgdlm_jax.training.step']]


# ----------------------------------------------------------------------------- config keys

SECTIONS = frozenset(k for k, v in config_lib.default_config().items() if isinstance(v, ml_collections.ConfigDict))
# Methods of a ConfigDict, not keys.
CONFIG_METHODS = frozenset(
  (
    'to_json',
    'to_dict',
    'items',
    'keys',
    'values',
    'as_configdict',
    'copy_and_resolve_references',
    'lock',
    'unlock',
    'update',
    'ignore_type',
  )
)


def _chain(node: ast.AST) -> list[str] | None:
  """['config', 'model', 'hidden_size'] for `config.model.hidden_size`; None if not a name's attribute chain."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name):
    return [node.id] + parts[::-1]
  return None


class _ConfigReads(ast.NodeVisitor):
  """Every `config.section.key` (and aliases such as `tcfg = config.training`) read in one module."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    in_model = 'model' in path.relative_to(PACKAGE).parts[:1]
    # name -> the config path it stands for ('' = the whole config).
    self.scopes: list[dict[str, str]] = [{'config': '', 'model_config': 'model'}]
    self.self_config = 'model' if in_model else ''
    self.reads: list[tuple[int, str]] = []
    self.gets: list[int] = []

  def _resolve(self, chain: list[str]) -> tuple[str, list[str]] | None:
    head, rest = chain[0], chain[1:]
    if head == 'self' and rest[:1] == ['config']:
      return self.self_config, rest[1:]
    for scope in reversed(self.scopes):
      if head in scope:
        return scope[head], rest
    return None

  def visit_FunctionDef(self, node):
    scope = {}
    for arg in node.args.args + node.args.kwonlyargs:
      if arg.arg not in ('config', 'model_config'):
        scope[arg.arg] = None  # a parameter of another name shadows nothing we track
    self.scopes.append({k: v for k, v in scope.items() if v is not None})
    self.generic_visit(node)
    self.scopes.pop()

  visit_AsyncFunctionDef = visit_FunctionDef

  def visit_Assign(self, node):
    pairs = [(node.targets[0], node.value)] if len(node.targets) == 1 else []
    if pairs and isinstance(pairs[0][0], ast.Tuple) and isinstance(pairs[0][1], ast.Tuple):
      pairs = list(zip(pairs[0][0].elts, pairs[0][1].elts))  # a, b = config.data, config.training
    for target, value in pairs:
      chain = _chain(value)
      resolved = self._resolve(chain) if chain else None
      if resolved is not None and isinstance(target, ast.Name):
        base, rest = resolved
        if base == '' and len(rest) == 1 and rest[0] in SECTIONS:
          self.scopes[-1][target.id] = rest[0]
    self.generic_visit(node)

  def visit_Attribute(self, node):
    chain = _chain(node)
    resolved = self._resolve(chain) if chain else None
    if resolved is not None:
      base, rest = resolved
      path = [p for p in base.split('.') if p] + rest
      while path and path[-1] in CONFIG_METHODS:
        path.pop()
      if path and path[-1] == 'get':
        self.gets.append(node.lineno)
        path.pop()
      if path:
        self.reads.append((node.lineno, '.'.join(path)))
      return  # the chain's inner attributes are prefixes of this one
    self.generic_visit(node)


def config_reads() -> tuple[list[tuple[str, str]], list[str]]:
  """([(where, key)] of every config key read, [where] of every `.get` on a config)."""
  reads, gets = [], []
  for path in sorted(PACKAGE.rglob('*.py')):
    if path.parent.name == 'config':
      continue  # the config room reads the schema generically
    visitor = _ConfigReads(path)
    visitor.visit(ast.parse(path.read_text()))
    where = path.relative_to(PACKAGE.parent)
    reads += [(f'{where}:{line}', key) for line, key in visitor.reads]
    gets += [f'{where}:{line}' for line in visitor.gets]
  return reads, gets


def _exists(key: str) -> bool:
  node = config_lib.default_config()
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def test_every_config_key_read_in_the_package_is_in_the_schema():
  reads, _ = config_reads()
  assert len(reads) > 100  # the scan sees the package's reads (a broken scan would pass vacuously)
  assert [(where, key) for where, key in reads if not _exists(key)] == []


def test_no_config_key_is_read_with_a_second_default():
  _, gets = config_reads()
  assert gets == []


# The objective's one read of the training section: the cycle schedule counts micro-batches per update.
OBJECTIVE_TRAINING_READS = {'training.gradient_accumulation_steps'}


def test_the_objective_reads_no_training_key():
  # How the step takes the gradient (training.round_gradients) is the training room's choice.
  reads, _ = config_reads()
  assert [
    (where, key)
    for where, key in reads
    if where.startswith('lgdlm_jax/objective/') and key.startswith('training.') and key not in OBJECTIVE_TRAINING_READS
  ] == []


def test_every_config_key_is_declared_once_with_its_rule_and_one_line_help():
  assert set(config_lib.flat_items(config_lib.default_config())) == set(config_lib.KEYS)
  for name, key in config_lib.KEYS.items():
    assert key.name == name and callable(key.rule), name
    assert key.help and '\n' not in key.help and len(key.help) <= 120, name
    key.rule(name, key.default)  # every default passes its own rule


@pytest.mark.parametrize(
  'keys, message',
  [
    (
      (Key('model.n_blocks', 2, POSITIVE, 'Blocks.'), Key('model.n_blocks', 4, POSITIVE, 'Blocks again.')),
      'model.n_blocks is declared twice',
    ),
    (
      (
        Key('model.n_blocks', 2, POSITIVE, 'Blocks.', reference='model.depth'),
        Key('model.n_layers', 2, POSITIVE, 'Layers.', reference='model.depth'),
      ),
      'model.n_blocks and model.n_layers are both read from the reference key model.depth',
    ),
    ((Key('model.precision', None, POSITIVE, 'No type.'),), 'a None default needs a one_of rule'),
  ],
)
def test_a_key_declared_twice_fails(keys, message):
  with pytest.raises(ValueError, match=message):
    declare(keys)


@pytest.mark.parametrize(
  'source',
  [
    'def f(config):\n  return config.model.hiden_size\n',
    'def f(config):\n  tcfg = config.training\n  return tcfg.evl_every\n',
    'def f(config):\n  return config.data.get("num_workers", 8)\n',
  ],
)
def test_the_scan_catches_an_unknown_key_and_a_second_default(tmp_path, source):
  path = PACKAGE / 'loop.py'  # any module outside model/ and config/: only its location matters
  visitor = _ConfigReads(path)
  visitor.visit(ast.parse(source))
  assert visitor.gets or any(not _exists(key) for _, key in visitor.reads)
