"""Migration between the PyTorch LGDLM reference and lgdlm_jax, both ways.

  mapping     reference state-dict names <-> the Flax parameter tree (and the reference's parameter order)
  pickles     the reference's torch.save files read without running code from them
  files       every checkpoint layout the reference writes: files, run directories, what they hold
  layout      what a state dict says about its model: residual layout and model config
  moments     AdamW's state: torch's optimizer_state_dict <-> optax's, through one neutral form
  converted   directories of converted parameters (params/, config.json, optional optimizer state)
  workdirs    reading training workdirs (config.json, checkpoints/<step>/)
  sources     one reader for all of the above: what init_from, sampling and --to-torch start from
  init_from   the `init_from` config key: checked before any work, then applied to the train state
  exporters   the reference's layouts written back (--to-torch)
  verify      --verify: the PyTorch twin (lgdlm_jax.reference, the `reference` extra) against the Flax model
  __main__    the command line: python -m lgdlm_jax.convert (alias: python convert_torch_weights.py)

torch is a tool and test dependency, never a runtime one: it is imported only where a pickle is read
or written, and `verify` only by --verify.
"""

from lgdlm_jax.convert.mapping import ConversionError
from lgdlm_jax.convert.mapping import check_params
from lgdlm_jax.convert.mapping import flax_to_torch
from lgdlm_jax.convert.mapping import param_shapes
from lgdlm_jax.convert.mapping import reference_parameter_order
from lgdlm_jax.convert.mapping import torch_param_shapes
from lgdlm_jax.convert.mapping import torch_to_flax
