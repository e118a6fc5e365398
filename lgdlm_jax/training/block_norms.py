"""The norms of the gradient, the parameters and the update per MMDiT block and per other part
(logging.block_norms), e.g. `grad_norm/block_03`, `param_norm/text_head`, `update_norm/conditioning`.

The blocks run under nn.scan, so each block parameter is stacked with the block index as its
leading axis: its squares are summed per block. Every other parameter belongs to the part named by
its top-level module without the layer index (`latent_head_0` -> `latent_head`), and the MMDiT's
own non-block parameters to `mmdit_<name>` (its final norms). The parts cover every parameter once,
so the root of the sum of their squared norms is the global norm.
"""

from collections.abc import Mapping
import re
from typing import Any

import jax
import jax.numpy as jnp

from lgdlm_jax.model import units

_BLOCKS_PATH = units.BLOCKS_PATH
_LAYER_INDEX = re.compile(r'_\d+$')


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(entry, 'key', entry)) for entry in path)


def _part(names: tuple[str, ...]) -> str:
  top = _LAYER_INDEX.sub('', names[0])
  return f'{top}_{_LAYER_INDEX.sub("", names[1])}' if top == _BLOCKS_PATH[0] and len(names) > 2 else top


def group_norms(tree: Any) -> dict[str, jax.Array]:
  """{group: L2 norm of the tree's leaves in it}: one group per block ('block_00', ...) and per other part."""
  squares: dict[str, jax.Array] = {}

  def add(group: str, value: jax.Array) -> None:
    squares[group] = squares[group] + value if group in squares else value

  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    names = _names(path)
    square = jnp.square(leaf.astype(jnp.float32))
    if names[: len(_BLOCKS_PATH)] == _BLOCKS_PATH:
      per_block = jnp.sum(square.reshape(square.shape[0], -1), axis=1)
      width = max(2, len(str(square.shape[0] - 1)))
      for index in range(square.shape[0]):
        add(f'block_{index:0{width}d}', per_block[index])
    else:
      add(_part(names), jnp.sum(square))
  return {group: jnp.sqrt(value) for group, value in sorted(squares.items())}


def norm_metrics(
  grads: Mapping[str, Any], params: Mapping[str, Any], updates: Mapping[str, Any]
) -> dict[str, jax.Array]:
  """The step's metrics: `grad_norm/GROUP`, `param_norm/GROUP` and `update_norm/GROUP` for every group."""
  return {
    f'{what}_norm/{group}': norm
    for what, tree in (('grad', grads), ('param', params), ('update', updates))
    for group, norm in group_norms(tree).items()
  }
