"""The TPU compiler's own estimate of a compiled step's time, with every loop counted per iteration.

    estimate = estimate_step(compiled, device)   # None where the compiler estimates no time

libtpu's `compiled.cost_analysis()` holds `optimal_seconds`, but it counts the body of a while loop
(a `lax.scan` or `fori_loop`: the scan over the blocks, the pass-by-pass gradient, the blockwise
attention's key blocks, the hyper-connections' Sinkhorn rounds) ONCE, not once per iteration, and
it turns negative on a train step (its cost model gives up on the Pallas kernels). The compiled HLO
holds what the cost model thinks of each scheduled instruction instead: `estimated_cycles` in its
backend config. The HLO is walked from the entry computation, a while loop's body and condition
counted by the loop's trip count (XLA's `known_trip_count`, else N of its condition `i < N`, `i`
counted from 0 as JAX's loops are), a conditional by its most expensive branch (e.g. the text heads
that the pass-by-pass gradient runs on L2T passes only: the estimate errs on the slow side), and
the cycles are turned into seconds at the chip's clock. Two things are not in it, and are reported:
loops whose trip count the HLO does not state (counted once, `uncounted_loops`) and custom calls
without a cycle estimate (the Pallas kernels, e.g. splash attention: `uncosted_kernels`, each with
how many times the step runs it), whose time the caller adds its own way.
"""

from collections.abc import Mapping
import functools
import re
from typing import Any, NamedTuple

_HEADER = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$')
_OPCODE = re.compile(r'\s([a-z][a-z0-9\-_]*)\(')
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_KNOWN_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_ATTRIBUTE = {name: re.compile(rf'\b{name}=%?([\w.\-]+)') for name in ('condition', 'body', 'to_apply', 'calls')}
_BRANCH = re.compile(r'\b(?:true|false)_computation=%?([\w.\-]+)')
_BRANCH_LIST = re.compile(r'\bbranch_computations=\{([^}]*)\}')
_COMPARE = re.compile(r'compare\(%?[\w.\-]+,\s*%?([\w.\-]+)\),\s*direction=LT')
_PALLAS = 'custom_call_target="tpu_custom_call"'
_KERNEL_NAME = re.compile(r'(\.\d+)+$')  # splash_mha_fwd_segmented_residuals.2 -> splash_mha_fwd_...
_CONSTANT = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*s(?:32|64)\[\][^ ]*\s+constant\((\d+)\)')


class Instruction(NamedTuple):
  name: str
  opcode: str
  cycles: int
  line: str


# The TensorCore clock, by jax device_kind prefix: the published bf16 peak over the MXUs' FLOPs per
# cycle (v5e: 197 TFLOP/s = 4 MXUs x 128 x 128 x 2 x 1.5 GHz).
CLOCK_HZ = {'TPU v5 lite': 1.5e9, 'TPU v5e': 1.5e9}


class StepEstimate(NamedTuple):
  """seconds: the cycles of every instruction the step runs, every loop iteration counted, at the clock."""

  seconds: float
  cycles: int
  cycles_loops_once: int  # as the cost analysis counts them
  optimal_seconds: float  # the cost analysis' own figure, every loop body once (negative: it gave up)
  loops: dict[str, int]  # while instruction -> trip count (1 where unknown, see uncounted_loops)
  uncounted_loops: list[str]
  uncosted_kernels: dict[str, int]  # custom call without a cycle estimate -> times the step runs it


def parse_computations(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
  """(computation name -> its instructions, the entry computation's name) of an HLO module's text."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = '', None
  for line in hlo_text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header and not line.startswith(' '):
        current = header.group(1)
        computations[current] = []
        if line.startswith('ENTRY'):
          entry = current
      continue
    if line.startswith('}'):
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if match:
      opcode = _OPCODE.search(' ' + match.group(2))
      cycles = _CYCLES.search(line)
      computations[current].append(
        Instruction(match.group(1), opcode.group(1) if opcode else '', int(cycles.group(1)) if cycles else 0, line)
      )
  if not entry:
    raise ValueError('the HLO text has no ENTRY computation')
  return computations, entry


def trip_count(while_line: str, computations: Mapping[str, list[Instruction]]) -> int | None:
  """A while loop's iterations: XLA's known_trip_count, else N of a condition `i < N` (i from 0)."""
  known = _KNOWN_TRIPS.search(while_line)
  if known:
    return int(known.group(1))
  condition = _ATTRIBUTE['condition'].search(while_line)
  instructions = computations.get(condition.group(1), []) if condition else []
  constants = {}
  for instruction in instructions:
    constant = _CONSTANT.match(instruction.line)
    if constant:
      constants[constant.group(1)] = int(constant.group(2))
  roots = [i for i in instructions if i.line.lstrip().startswith('ROOT') and i.opcode == 'compare']
  compare = _COMPARE.search(roots[0].line) if roots else None
  return constants.get(compare.group(1)) if compare else None


class Cycles(NamedTuple):
  total: int
  loops: dict[str, int]
  uncounted_loops: list[str]
  uncosted_kernels: dict[str, int]


def total_cycles(hlo_text: str, count_trips: bool = True) -> Cycles:
  """The estimated cycles of the entry computation (see the module doc); with count_trips False
  every loop body counts once, as the cost analysis counts it."""
  computations, entry = parse_computations(hlo_text)
  loops: dict[str, int] = {}
  uncounted: list[str] = []
  kernels: dict[str, int] = {}

  def add_kernels(found: dict[str, int], times: int) -> None:
    for name, count in found.items():
      kernels[name] = kernels.get(name, 0) + count * times

  @functools.cache
  def cycles(name: str) -> tuple[int, tuple[tuple[str, int], ...]]:
    """(cycles, uncosted kernels with their counts) of one run of computation `name`."""
    total, found = 0, {}

    def run(called: str, times: int = 1) -> int:
      called_cycles, called_kernels = cycles(called)
      for kernel, count in called_kernels:
        found[kernel] = found.get(kernel, 0) + count * times
      return called_cycles * times

    for instruction in computations.get(name, []):
      line = instruction.line
      if instruction.opcode == 'while':
        trips = trip_count(line, computations)
        if trips is None:
          uncounted.append(instruction.name)
        loops[instruction.name] = trips or 1
        n = (trips or 1) if count_trips else 1
        body = _ATTRIBUTE['body'].search(line)
        condition = _ATTRIBUTE['condition'].search(line)
        total += run(body.group(1), n) + run(condition.group(1), n + 1 if count_trips else 1)
      elif instruction.opcode == 'conditional':
        names = _BRANCH.findall(line)
        for branches in _BRANCH_LIST.findall(line):
          names += [b.strip().lstrip('%') for b in branches.split(',') if b.strip()]
        costliest = max(names, key=lambda b: cycles(b)[0], default=None)
        total += instruction.cycles + (run(costliest) if costliest else 0)
      elif instruction.opcode in ('call', 'async-start') and not instruction.cycles:
        called = _ATTRIBUTE['to_apply'].search(line) or _ATTRIBUTE['calls'].search(line)
        total += run(called.group(1)) if called else 0
      elif instruction.opcode == 'custom-call' and not instruction.cycles and _PALLAS in line:
        kernel = _KERNEL_NAME.sub('', instruction.name)
        found[kernel] = found.get(kernel, 0) + 1
      else:  # a fusion's cycles cover its fused computation
        total += instruction.cycles
    return total, tuple(found.items())

  total, found = cycles(entry)
  add_kernels(dict(found), 1)
  return Cycles(total, loops, sorted(set(uncounted)), kernels)


def estimate_step(compiled: Any, device: Any) -> StepEstimate | None:
  """The step's estimate per device (see the module doc); None where the compiler gives no cost
  analysis of its own (every backend but libtpu) or the chip's clock is not known here."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  clock = next((v for k, v in CLOCK_HZ.items() if device.device_kind.startswith(k)), None)
  if not analysis or 'optimal_seconds' not in analysis or clock is None:
    return None
  text = compiled.as_text()
  counted, once = total_cycles(text, count_trips=True), total_cycles(text, count_trips=False)
  return StepEstimate(
    seconds=counted.total / clock,
    cycles=counted.total,
    cycles_loops_once=once.total,
    optimal_seconds=float(analysis['optimal_seconds']),
    loops=counted.loops,
    uncounted_loops=counted.uncounted_loops,
    uncosted_kernels=counted.uncosted_kernels,
  )
