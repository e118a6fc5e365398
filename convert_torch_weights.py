"""The converter's historical entry point: the same command as `python -m lgdlm_jax.convert` (see --help)."""

from lgdlm_jax.convert.__main__ import main

if __name__ == '__main__':
  raise SystemExit(main())
