"""The PyTorch reference, restated in one place: its model around the real pinned `mmdit` (model), its
cycle_vae loss (cycle_loss), its learning rate (lr), its train step (trainer), how it writes and loads
checkpoints (checkpoints), and latentDLM's stable trainer: its loss (stable_loss) and step (stable_trainer).

Written from docs/reference.md and the meaning of the reference's code, not copied. Needs the `reference`
extra (`pip install -e .[reference]`, part of `.[test]`): torch, mmdit, hyper-connections and x-transformers
at the versions the parity tests are written against. Only `convert --verify`, the tests and the benchmarks
against PyTorch import it; training never does.
"""
