"""Device mesh and shardings: data parallelism plus fully sharded parameters (FSDP).

The mesh has two axes, ('data', 'fsdp'). The batch is split over both (every device gets its own
examples); each parameter, and with it its optimizer state, is split over 'fsdp' along its
largest axis that the fsdp size divides, when it is big enough to be worth it (nanodo's rule).
Small or indivisible parameters are replicated.
"""

import math
from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

MESH_AXES = ('data', 'fsdp')
BATCH_SPEC = P(MESH_AXES)


def make_mesh(config: ml_collections.ConfigDict, devices: list[Any] | None = None) -> Mesh:
  """config.mesh.fsdp devices share each parameter; the rest of the devices split the data."""
  devices = jax.devices() if devices is None else devices
  fsdp = config.mesh.fsdp
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'mesh.fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices')
  return Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), MESH_AXES)


def param_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """Shards the largest axis divisible by fsdp_size, for arrays of at least min_size elements."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def tree_shardings(abstract_tree: Any, mesh: Mesh, min_size: int = 2**14) -> Any:
  """NamedShardings for every array of a (possibly abstract) pytree, by param_spec."""
  fsdp_size = mesh.shape['fsdp']
  return jax.tree_util.tree_map(
    lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp_size, min_size)), abstract_tree
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of the global batch -> global arrays split over the whole mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def per_device_bytes(tree: Any, fsdp_size: int, min_size: int = 2**14) -> int:
  """Bytes one device holds of a (possibly abstract) pytree sharded by param_spec."""
  total = 0
  for x in jax.tree_util.tree_leaves(tree):
    shape = list(x.shape)
    spec = param_spec(tuple(shape), fsdp_size, min_size)
    for axis, name in enumerate(spec):
      if name == 'fsdp':
        shape[axis] //= fsdp_size
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total
