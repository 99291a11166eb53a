"""Ops tests: on a machine without CUDA, run detkit's Triton kernels under Triton's CPU interpreter.

TRITON_INTERPRET must be set before the kernel modules are imported (triton.jit decides at decoration
time); this conftest is imported during collection, before any test calls into detkit.ops.kernels. With
CUDA present it is left alone, so the `gpu` tests exercise the compiled kernels.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _kernels_interpreted() -> bool:
    """True when the Triton kernels run (or will run) under the interpreter."""
    from detkit.ops.dispatch import interpreting, triton_available

    if not interpreting() or not triton_available():
        return False
    module = sys.modules.get("detkit.ops.kernels.nms")
    if module is None:
        return True
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(module._iou_mask_kernel, InterpretedFunction)


@pytest.fixture
def triton_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the Triton backend for CPU tensors (skips unless the interpreter is active)."""
    if not _kernels_interpreted():
        pytest.skip("needs TRITON_INTERPRET=1 set before the kernels are imported (set here when CUDA is absent)")
    monkeypatch.setenv("DETKIT_OPS", "triton")


@pytest.fixture
def torchvision_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the torchvision / pure-PyTorch backend."""
    monkeypatch.setenv("DETKIT_OPS", "torchvision")


def random_boxes(n: int, size: float = 40.0, max_side: float = 20.0, seed: int = 0, dtype=torch.float32
                 ) -> torch.Tensor:
    """Return Tensor[n, 4] random x1, y1, x2, y2 boxes with corners in [0, size + max_side]."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * max_side
    return torch.cat([xy, xy + wh], 1).to(dtype)


def random_rois(n: int, images: int, size: float = 40.0, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Return Tensor[n, 5] rois (batch_idx, x1, y1, x2, y2), some reaching past a 40 px image."""
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, images, (n, 1), generator=g).to(dtype)
    return torch.cat([idx, random_boxes(n, size, 20.0, seed, dtype) - 4], 1)
