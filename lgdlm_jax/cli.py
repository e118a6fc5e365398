"""One command-line style for every `python -m lgdlm_jax.X` entry point: absl flags and config_flags.

An entry point defines its flags on a FlagValues of its own (so that several entry points can be
imported into one process, and `main(argv)` can be called more than once, as the tests do) and
hands its work to `run`:

    def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None: ...
    def work(flag_values: flags.FlagValues, args: list[str]) -> int | None: ...
    def main(argv: list[str] | None = None) -> int:
      return cli.run(work, define_flags, argv, doc=__doc__)

What every entry point then does alike:
- `--help` (or `-h`, `--helpfull`) prints the module's usage and its flags, and exits 0;
- `--help_config` (where the entry point takes a config) lists every config key with its default,
  choices and help, and exits 0;
- a flag error (an unknown flag, a bad value, an unknown `--config.a.b` key, with the closest key
  as a suggestion, a config file that cannot be loaded, with the error its get_config() raised and
  not config_flags' traceback) is one line on stderr, exit status 2;
- an `errors.InputError` (a bad config value or file), a missing, unreadable or misplaced path, or
  an output path on a read-only or full file system is one line on stderr, exit status 1;
- any other exception is a bug and keeps its traceback;
- `--verbose` (every entry point) also shows the libraries' INFO logs (Orbax, grain, JAX), which
  are off by default (lgdlm_jax.console).
"""

from collections.abc import Callable, Sequence
import difflib
import errno
import itertools
import os
import re
import sys

from absl import flags
import ml_collections
from ml_collections import config_flags

from lgdlm_jax import console
from lgdlm_jax import errors

HELP_FLAGS = ('--help', '-h', '--helpfull', '--helpshort', '-help')
HELP_CONFIG = 'help_config'
# Besides errors.InputError: a path the user gave that is missing, of the wrong kind or not ours to write.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)
# A place the user pointed the output at that cannot take it: one line naming the path, not a bug.
STORAGE_ERRNOS = frozenset((errno.EROFS, errno.ENOSPC, errno.EDQUOT))
# What ml_collections' config_flags puts before the formatted traceback of a config file's load error.
_CONFIG_LOAD_PREFIX = 'Error whilst parsing config file'
USAGE_ERROR = 2
INPUT_ERROR = 1

DefineFlags = Callable[[flags.FlagValues, Sequence[str]], None]
Work = Callable[[flags.FlagValues, list[str]], 'int | None']


class UsageError(errors.InputError):
  """The command line is wrong (a missing or contradictory flag); exit status 2."""


def define_config_flag(
  flag_values: flags.FlagValues, argv: Sequence[str], default: str | None, help_string: str, name: str = 'config'
) -> None:
  """`--config FILE.py[:arg]` with `--config.a.b=value` overrides (ml_collections.config_flags).

  The overrides are read from `argv` (not sys.argv), so that `main(argv)` works in-process.
  """
  config_flags.DEFINE_config_file(
    name, default, help_string, flag_values=flag_values, lock_config=True, sys_argv=list(argv)
  )
  if HELP_CONFIG not in flag_values:  # `run` answers it before any config file is read
    flags.DEFINE_boolean(
      HELP_CONFIG, False, 'List every config key with its default, choices and help, and exit.', flag_values=flag_values
    )


def run(work: Work, define_flags: DefineFlags, argv: Sequence[str] | None = None, *, doc: str | None) -> int:
  """Parses argv (default sys.argv) with the entry point's flags and runs `work`; returns the exit status."""
  argv = list(sys.argv if argv is None else [_program(), *argv])
  prog = _program()
  flag_values = flags.FlagValues()
  if f'--{HELP_CONFIG}' in argv[1:] and _takes_config(define_flags, argv[:1]):
    from lgdlm_jax import config as config_lib  # pylint: disable=g-import-not-at-top  (only for this listing)

    print(config_lib.help_text())
    return 0
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    problem = _define_for_help(define_flags, flag_values, argv[:1])
    print(_usage(doc, flag_values))
    if problem:
      print(f'(the default config could not be loaded, so its --config.* flags are not listed: {problem})')
    return 0
  try:
    define_flags(flag_values, argv)
    _define_common_flags(flag_values)
    args = flag_values(argv)[1:]
    _load_config_flags(flag_values)
  except (flags.Error, AttributeError, KeyError, ValueError, OSError, SyntaxError) as e:
    print(f'{prog}: error: {_flag_error_message(e, argv)}', file=sys.stderr)
    return USAGE_ERROR
  _mark_global_flags_parsed()
  console.configure_logging(flag_values.verbose)
  try:
    return int(work(flag_values, args) or 0)
  except UsageError as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return USAGE_ERROR
  except (errors.InputError, *PATH_ERRORS) as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return INPUT_ERROR
  except OSError as e:
    if e.errno not in STORAGE_ERRNOS:
      raise
    print(f'{prog}: error: {e}', file=sys.stderr)
    return INPUT_ERROR


def main_exit(work: Work, define_flags: DefineFlags, doc: str | None) -> None:
  """`run` on sys.argv, then exit with its status: the body of `if __name__ == '__main__'`."""
  sys.exit(run(work, define_flags, None, doc=doc))


def _program() -> str:
  main_module = sys.modules.get('__main__')
  spec = getattr(main_module, '__spec__', None)
  if spec is not None and spec.name.startswith('lgdlm_jax'):
    return f'python -m {spec.name.removesuffix(".__main__")}'
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'lgdlm_jax'


def _load_config_flags(flag_values: flags.FlagValues) -> None:
  # config_flags defers a config file's load error until the config is first read; read each now,
  # so that a missing or broken file is a flag error before any work.
  for name in flag_values:
    value = flag_values[name].value
    if hasattr(value, 'keys'):
      value.keys()


def _define_for_help(define_flags: DefineFlags, flag_values: flags.FlagValues, argv: Sequence[str]) -> str | None:
  """Defines the flags for --help; a default config that fails to load (e.g. run from another folder)
  must not stop the help text: returns what went wrong instead."""
  try:
    define_flags(flag_values, argv)
  except (flags.Error, AttributeError, KeyError, ValueError, OSError) as e:
    return ' '.join(str(e).split())
  finally:
    _define_common_flags(flag_values)
  return None


def _takes_config(define_flags: DefineFlags, argv: Sequence[str]) -> bool:
  """Whether the entry point defines a config flag (and with it --help_config)."""
  probe = flags.FlagValues()
  _define_for_help(define_flags, probe, argv)
  return HELP_CONFIG in probe


def _define_common_flags(flag_values: flags.FlagValues) -> None:
  if 'verbose' not in flag_values:
    flags.DEFINE_boolean(
      'verbose',
      False,
      "Also show the libraries' INFO logs (Orbax, grain, JAX) and absl's full log format.",
      flag_values=flag_values,
    )


def _usage(doc: str | None, flag_values: flags.FlagValues) -> str:
  flag_help = flag_values.get_help(include_special_flags=False)
  return '\n'.join(part for part in ((doc or '').strip(), 'Flags:', flag_help) if part)


def _flag_error_message(error: BaseException, argv: Sequence[str]) -> str:
  """One line: which flag or config key is wrong, with the closest known key when it is misspelt."""
  unknown = _unknown_config_key(argv)
  if unknown is not None:
    return unknown
  loading = _config_load_error(error)
  if loading is not None:
    return loading
  if isinstance(error, SyntaxError):
    return f'{error.filename}, line {error.lineno}: {error.msg}'
  return ' '.join(str(error).split())


def _config_load_error(error: BaseException) -> str | None:
  """The error a config file's get_config() raised, without the traceback config_flags wraps it in.

  config_flags re-raises it as `Error whilst parsing config file: <traceback>` inside its handler,
  so the original is that wrapper's __context__. An InputError names its file and key already;
  anything else is prefixed with the flag.
  """
  chain: list[BaseException] = []
  link: BaseException | None = error
  while link is not None and link not in chain:
    chain.append(link)
    link = link.__cause__ or link.__context__
  for outer, inner in itertools.pairwise(chain):
    if str(inner).startswith(_CONFIG_LOAD_PREFIX) and inner.__context__ is not None:
      original = inner.__context__
      message = ' '.join(str(original).split()) or type(original).__name__
      if isinstance(original, errors.InputError):
        return message
      flag, found, _ = str(outer).partition(f': {_CONFIG_LOAD_PREFIX}')
      where = f'{flag.removeprefix("flag ")}: ' if found else ''
      return f'{where}{type(original).__name__}: {message}'
  return None


def _unknown_config_key(argv: Sequence[str]) -> str | None:
  """'--config.a.b: no such config key (did you mean a.c?)' for the first override not in the schema."""
  from lgdlm_jax import config as config_lib  # pylint: disable=g-import-not-at-top  (only on errors)

  schema = config_lib.default_config()
  for arg in argv[1:]:
    match = re.match(r'^--?(?:no)?config\.([\w.]+)', arg)
    if match is None:
      continue
    node: ml_collections.ConfigDict | object = schema
    walked: list[str] = []
    for part in match.group(1).split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        choices = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, choices, n=1)
        known = '.'.join(walked)
        hint = (
          f' (did you mean {".".join(walked + close)}?)'
          if close
          else (f' ({known or "the config"} has {", ".join(sorted(choices))})' if choices else '')
        )
        return f'--config.{match.group(1)}: no such config key{hint}'
      node = node[part]
      walked.append(part)
  return None


def _mark_global_flags_parsed() -> None:
  # absl's logging reads the global FLAGS; without this it warns that logging began before parsing.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
