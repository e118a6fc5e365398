"""Bad samples found while training, counted once each, and the stop decision all processes share.

With `data.skip_bad_files` a corrupt sample is replaced (lgdlm_jax.data.pipeline) and reported
here; the run stops when the distinct bad samples of the whole dataset (the unpaired token files
found at listing included) exceed `data.max_bad_fraction` of it. Without it the first bad sample
stops the run. A process never decides alone: with several processes every one reports what it
found to all the others at the same steps (`agree`, called after every training step) and all of
them stop at the same step, instead of one raising while the others wait in a collective.

The exchange is a tiny all-gather on the devices, dispatched at one step and read back at the
next, so it never makes the host wait for the device.
"""

from __future__ import annotations

from collections.abc import Iterable
import math
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

from lgdlm_jax.data.formats import DataError

SLOTS = 64  # sample keys one process can report per exchange; more wait for the next one
_EMPTY = -1


class BadSamples:
  """Distinct bad sample keys (dataset indices) against the allowed count."""

  def __init__(
    self, num_samples: int, *, skip: bool, max_fraction: float, process_count: int, unpaired: Iterable[str] = ()
  ):
    self.num_samples = num_samples
    self.allowed = math.floor(max_fraction * num_samples) if skip else 0
    self._skip = skip
    self._process_count = process_count
    self._unpaired = tuple(unpaired)
    self._agreed: set[int] = set()  # known to every process
    self._unshared: list[int] = []  # found here, not yet in an exchange read back
    self._first_message = self._unpaired[0] + ': no latent partner' if self._unpaired else ''
    self._in_flight: tuple[jax.Array, list[int]] | None = None
    self._gather = None
    self._check()

  @property
  def count(self) -> int:
    return len(self._agreed | set(self._unshared)) + len(self._unpaired)

  def found(self, bad: Iterable[tuple[int, str]]) -> None:
    """Reports (key, message) pairs a batch's decoding met; with one process, decides at once."""
    for key, message in bad:
      if key in self._agreed or key in self._unshared:
        continue
      logging.warning('Bad sample (%s): %s', 'replaced' if self._skip else 'stopping', message)
      self._first_message = self._first_message or message
      self._unshared.append(key)
    if self._process_count == 1:
      self._agreed.update(self._unshared)
      self._unshared.clear()
      self._check()

  def agree(self) -> None:
    """Reads back the previous exchange and starts the next; call it at the same steps on every process."""
    if self._process_count == 1:
      return
    if self._in_flight is not None:
      gathered, sent = self._in_flight
      keys = np.asarray(gathered.addressable_data(0)).reshape(-1)
      self._agreed.update(int(k) for k in keys if k != _EMPTY)
      self._unshared = [k for k in self._unshared if k not in self._agreed and k not in sent]
    self._in_flight = self._exchange()
    self._check()

  def _exchange(self) -> tuple[jax.Array, list[int]]:
    send = self._unshared[:SLOTS]
    row = np.full(SLOTS, _EMPTY, np.int32)
    row[: len(send)] = send
    mesh = Mesh(np.asarray(jax.devices()), ('processes',))
    if self._gather is None:
      self._gather = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))
    local = np.tile(row, (jax.local_device_count(), 1))
    rows = jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec('processes')), local, (jax.device_count(), SLOTS)
    )
    return self._gather(rows), send

  def _check(self) -> None:
    agreed = len(self._agreed) + len(self._unpaired)
    if agreed <= self.allowed:
      return
    where = f'; first found here: {self._first_message}' if self._first_message else ''
    if not self._skip:
      raise DataError(f'bad sample (set data.skip_bad_files=True to replace bad samples){where}')
    raise DataError(
      f'{agreed} of {self.num_samples} samples are bad, more than data.max_bad_fraction allows '
      f'({self.allowed}){where}; `python -m lgdlm_jax.prepare_data check` lists them'
    )

  def get_state(self) -> dict[str, Any]:
    in_flight = self._in_flight[1] if self._in_flight is not None else []
    return {'agreed': sorted(self._agreed), 'unshared': sorted(set(self._unshared) | set(in_flight))}

  def set_state(self, state: dict[str, Any], *, agreed_only: bool = False) -> None:
    """Restores a saved tally; agreed_only for another process's state (its own finds are its own)."""
    self._agreed = {int(k) for k in state['agreed']}
    self._unshared = [] if agreed_only else [int(k) for k in state['unshared']]
    self._in_flight = None
    if self._process_count == 1:
      self._agreed.update(self._unshared)
      self._unshared.clear()
