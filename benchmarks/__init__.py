"""Benchmark scripts (python benchmarks/NAME.py); torch_reference.py is the PyTorch side they share."""
