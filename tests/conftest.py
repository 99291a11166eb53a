"""Test-wide set-up. Without CUDA, detkit's Triton kernels run under Triton's CPU interpreter, which must be
chosen before any kernel module is imported (triton.jit decides at decoration time), so it is set here, first."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
