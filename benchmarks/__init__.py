"""Benchmark scripts, run from the repository root as `python3 -m benchmarks.NAME`; the PyTorch side they time
is lgdlm_jax.reference."""
