"""A reference LGDLM YAML file as a config: --config configs/reference_yaml.py:PATH.yaml

The YAML's keys are read with the reference's meaning (see lgdlm_jax.config.reference_yaml, and
docs/reference.md for the table); keys with no effect here are listed in a warning. The usual
--config.a.b=value overrides apply on top, in lgdlm_jax's own key names.

Use: python -m lgdlm_jax.main --config configs/reference_yaml.py:path/to/mmdit_cycle_vae.yaml --workdir DIR
"""

import ml_collections

from lgdlm_jax.config import reference_yaml


def get_config(path: str) -> ml_collections.ConfigDict:
  if not path:
    raise ValueError('configs/reference_yaml.py needs the YAML file: --config configs/reference_yaml.py:PATH.yaml')
  return reference_yaml.load_reference_yaml(path)
