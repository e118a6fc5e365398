"""Compiling for accelerators this machine does not have: a TPU slice (libtpu) or NVIDIA GPUs (a
deviceless CUDA compile), so that a config's memory is known before anyone rents the hardware.

    devices, platform = target_devices('v5e:2x4')        # or 'h100', 'h100:8' (one 8-GPU node)
    report = memory_report(compiled.memory_analysis(), devices[0])

TPU names are libtpu's, GENERATION:TOPOLOGY (v4:2x2x1, v5e:2x4, v5p:2x2x1, v6e:2x2, ...), and need
`pip install -e '.[tpu]'` (jax[tpu], which brings libtpu; TPU_SKIP_MDS_QUERY=1 keeps
it from probing for a metadata server). GPU names need `pip install -e '.[cuda]'` and
JAX_PLATFORMS=cpu (the CUDA plugin would otherwise fail to find a GPU at start-up); the GPU is
described by gpu_targets/h100_sxm.txtpb. The figures are the target compiler's own
(memory_analysis of the compiled step), per device; speed cannot be measured this way.
"""

import importlib.util
import os
import re
from typing import Any

from jax.experimental import topologies

from lgdlm_jax.errors import InputError

GIB = 2**30
# High-bandwidth memory per device, by jax device_kind (the longest matching prefix wins).
CHIP_MEMORY_BYTES = {
  'TPU v4': 32 * GIB,
  'TPU v5 lite': 16 * GIB,
  'TPU v5': 95 * GIB,  # v5p
  'TPU v6 lite': 32 * GIB,
  'NVIDIA H100': 84_942_979_072,  # H100 SXM 80 GB, as its target description states
}
_GPU_TARGETS = {'h100': 'h100_sxm.txtpb'}
_GPU_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_targets')
_TPU_NAME = re.compile(r'^v\d+[a-z]*:\d+(x\d+)+$')


def target_devices(topology: str) -> tuple[list[Any], str]:
  """(devices of the named topology, their platform: 'tpu' or 'gpu'); InputError naming the topology
  if it is unknown or its compiler is not installed."""
  name = topology.strip().lower()
  gpu, _, count = name.partition(':')
  if gpu in _GPU_TARGETS:
    if count and not count.isdigit():
      raise InputError(f'--topology={topology!r}: expected {gpu} or {gpu}:N (N GPUs in one node)')
    return _gpu_devices(topology, _GPU_TARGETS[gpu], int(count or 1)), 'gpu'
  if not _TPU_NAME.match(name):
    raise InputError(
      f'--topology={topology!r}: expected a TPU slice such as v5e:2x4 or v5p:2x2x1, or a GPU '
      f'node such as {", ".join(_GPU_TARGETS)} or h100:8'
    )
  if importlib.util.find_spec('libtpu') is None:
    raise InputError(
      f'--topology={topology!r} needs libtpu: pip install -e ".[tpu]" (in a separate '
      'environment: it changes how JAX starts on every run)'
    )
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform='tpu').devices), 'tpu'
  except Exception as e:  # libtpu's own message says what is wrong with the name
    raise InputError(f'--topology={topology!r}: {str(e).splitlines()[0]}') from e


def _gpu_devices(topology: str, target_file: str, count: int) -> list[Any]:
  if importlib.util.find_spec('jax_plugins') is None or importlib.util.find_spec('jax_plugins.xla_cuda12') is None:
    raise InputError(
      f'--topology={topology!r} needs the CUDA plugin: pip install -e ".[cuda]" (in a '
      'separate environment), and JAX_PLATFORMS=cpu on a machine without a GPU'
    )
  with open(os.path.join(_GPU_DIR, target_file)) as f:
    target_config = f.read()
  try:
    topo = topologies.get_topology_desc(
      platform='cuda', topology_name='', target_config=target_config, topology=f'1x1x{count}'
    )
  except Exception as e:
    raise InputError(
      f'--topology={topology!r}: the CUDA compiler could not start ({str(e).splitlines()[0]}); '
      'run with JAX_PLATFORMS=cpu'
    ) from e
  return list(topo.devices)


def chip_memory_bytes(device: Any) -> int | None:
  kind = device.device_kind
  matches = [k for k in CHIP_MEMORY_BYTES if kind.startswith(k)]
  return CHIP_MEMORY_BYTES[max(matches, key=len)] if matches else None


def memory_report(memory: Any, device: Any) -> dict[str, Any]:
  """Per-device bytes of a compiled step (XLA's memory_analysis), its peak and whether it fits the chip.

  The peak is arguments + outputs - aliased (donated) bytes + temporaries: everything live at once
  in the worst case; the compiler's own allocation can only be smaller.
  """
  argument, output = memory.argument_size_in_bytes, memory.output_size_in_bytes
  alias, temp = memory.alias_size_in_bytes, memory.temp_size_in_bytes
  peak = argument + output - alias + temp
  chip = chip_memory_bytes(device)
  return {
    'argument_bytes': argument,
    'output_bytes': output,
    'alias_bytes': alias,
    'temp_bytes': temp,
    'peak_bytes': peak,
    'argument_plus_temp_gib': round((argument + temp) / GIB, 2),
    'peak_gib': round(peak / GIB, 2),
    'chip_memory_gib': None if chip is None else round(chip / GIB, 2),
    'fits': None if chip is None else peak <= chip,
  }


def processes(devices: list[Any]) -> int:
  """How many hosts the devices belong to (each process reads its own rows of the batch)."""
  return len({getattr(d, 'process_index', 0) for d in devices}) or 1
