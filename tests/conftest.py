"""Test-session settings shared by every test module: which modules run alone (the `serial` marker).

CI runs the suite in two processes (pytest-xdist, `-n 2 -m 'not serial'`) and then the serial
modules on their own (`-m serial`): each of these starts several JAX processes or a cluster that must
make progress together, and beside another test's compile on a 2-core machine they would only wait
for a core. Run in one process (plain `python3 -m pytest`), the marker changes nothing.
"""

import pytest

# module -> why it runs alone.
SERIAL = {
  'multihost_test': 'two training processes talk through jax.distributed and are preempted on a signal',
  'data_multiprocess_test': 'two loader processes meet at a coordinator and stop together',
  'slurm_test': 'a one-node SLURM cluster runs a two-task job',
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  for item in items:
    module = getattr(item, 'module', None)
    if module is not None and module.__name__.rsplit('.', 1)[-1] in SERIAL:
      item.add_marker(pytest.mark.serial)
