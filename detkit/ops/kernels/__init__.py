"""Triton kernels behind detkit.ops; imported only when a call is dispatched to Triton."""
