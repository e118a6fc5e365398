"""PyTorch interop for convert_torch_weights.py: the reference's checkpoint files, what their tensors
say about the model, and a PyTorch twin of the model for verification.

torch is a test/tool dependency, never a runtime one: `files` imports it only to read or write
pickles, `layout` never, and `twin` (which needs torch and mmdit) is imported only by `--verify`
and the tests.
"""
