"""The history and config keys of an offline W&B run, read from its run-ID.wandb file.

The file is a LevelDB-style log (the format `wandb sync` reads): a 7-byte header, then 32 KiB blocks
of chunks, each with a 7-byte header (checksum, little-endian length, type: 1 whole, 2 first,
3 middle, 4 last) around a piece of a serialized wandb Record.
"""

import glob
import os
import struct

_BLOCK = 32768
_CHUNK_HEADER = 7


def _records(path: str):
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:4] == b':W&B', f'{path} is not a W&B run file'
  offset, pieces = 7, []
  while offset + _CHUNK_HEADER <= len(data):
    left_in_block = _BLOCK - offset % _BLOCK
    if left_in_block < _CHUNK_HEADER:
      offset += left_in_block  # the block's tail is padding
      continue
    _, length, kind = struct.unpack('<IHB', data[offset : offset + _CHUNK_HEADER])
    offset += _CHUNK_HEADER
    pieces.append(data[offset : offset + length])
    offset += length
    if kind in (1, 4):
      yield b''.join(pieces)
      pieces = []


def read_run(wandb_dir: str) -> dict:
  """{'history': {step: {key: value_json}}, 'config': {key}, 'run_id': id} of the one offline run under wandb_dir."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top

  [path] = glob.glob(os.path.join(wandb_dir, 'wandb', 'offline-run-*', 'run-*.wandb'))
  history, config, run_id = {}, set(), None
  for data in _records(path):
    record = wandb_internal_pb2.Record()
    record.ParseFromString(data)
    kind = record.WhichOneof('record_type')
    if kind == 'history':
      items = {item.key or '/'.join(item.nested_key): item.value_json for item in record.history.item}
      history.setdefault(int(items['_step']), {}).update(items)
    elif kind == 'config':
      config.update(item.key or '/'.join(item.nested_key) for item in record.config.update)
    elif kind == 'run':
      run_id = record.run.run_id
      config.update(item.key or '/'.join(item.nested_key) for item in record.run.config.update)
  return {'history': history, 'config': config, 'run_id': run_id}
