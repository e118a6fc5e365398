"""Where MultimodalMMDiT keeps its scanned blocks' parameters, and what one tensor of the reference is here.

The blocks run under nn.scan (lgdlm_jax.model.mmdit, name='blocks' inside the module 'mmdit'), so each block
parameter is one leaf with the block index as its leading axis, where the reference has one tensor per block. Any
per-tensor state of the reference (torch AdamW's update count, a frozen flag) is therefore one value per block
slice of such a leaf, and one value for every other leaf: a leaf's `unit_shape`.
"""

from collections.abc import Sequence

BLOCKS_PATH = ('mmdit', 'blocks')


def is_block_parameter(path: Sequence[str]) -> bool:
  return tuple(path[: len(BLOCKS_PATH)]) == BLOCKS_PATH


def unit_shape(path: Sequence[str], shape: Sequence[int]) -> tuple[int, ...]:
  """The shape of a leaf's per-tensor values: one per block for stacked block parameters (broadcasting
  against the leaf), else one (a scalar)."""
  if is_block_parameter(path):
    return (shape[0],) + (1,) * (len(shape) - 1)
  return ()
