"""The errors that mean "your input is wrong", as opposed to a fault in lgdlm_jax.

Entry points print an InputError as one line naming the file, key or value, without a traceback;
anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
  """A config value, a file, a path or a command-line argument the user gave cannot be used."""


class ConfigError(InputError):
  """A config key is unknown or its value is invalid; the message names the key and the value."""


class StorageError(InputError):
  """A file or checkpoint cannot be written: the disk is full, the path read-only; the message names the path."""
