"""Test-wide set-up. Without CUDA, detkit's Triton kernels run under Triton's CPU interpreter, which must be
chosen before any kernel module is imported (triton.jit decides at decoration time), so it is set here, first."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (the README's -n auto) the workers share the cores: each takes its part of them for the torch
# ops it runs itself, instead of every worker starting a thread per core.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))
