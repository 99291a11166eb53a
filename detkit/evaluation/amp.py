"""Test-time mixed precision: a detector wrapped so that its forward runs under bf16 autocast and hands back
float32 detections (boxes x1, y1, x2, y2 in absolute pixels, scores, labels as the detector gives them).

`test.amp`: off (float32), bf16, or auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX, as
`torch.ops.mkldnn._is_mkldnn_bf16_supported()` reports), float32 elsewhere (emulated bf16 is slower than float32).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detkit.errors import DetkitError

TEST_AMP_MODES = ("auto", "off", "bf16")


def resolve_test_amp(amp: str, device: torch.device) -> str:
    """'bf16' or 'off' for a test.amp setting on a device."""
    if amp not in TEST_AMP_MODES:
        raise DetkitError(f"test.amp must be one of {', '.join(TEST_AMP_MODES)}, got {amp!r}.")
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    return "bf16" if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "off"


class AutocastDetector(nn.Module):
    """A detector whose inference runs under bf16 autocast; float outputs come back as float32."""

    def __init__(self, module: nn.Module, device_type: str) -> None:
        super().__init__()
        self.module = module
        self.device_type = device_type

    @property
    def needs_proposals(self) -> bool:
        """The wrapped detector's: True when proposals must come with the input (Fast R-CNN, R-CNN)."""
        return bool(getattr(self.module, "needs_proposals", False))

    def forward(self, images: list[torch.Tensor], targets: Any = None, **kwargs: Any) -> Any:
        """The wrapped detector's forward (``proposals=`` and other keywords passed on) under autocast; training-mode
        losses come back as float32 too."""
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.module(images, targets, **kwargs) if targets is not None else self.module(images, **kwargs)
        return _to_float32(out)


    def detect_with_proposals(self, images: list[torch.Tensor], **kwargs: Any) -> Any:
        """The wrapped detector's detect_with_proposals under autocast, float outputs as float32."""
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.module.detect_with_proposals(images, **kwargs)
        return _to_float32(out)


def with_test_amp(model: nn.Module, amp: str, device: torch.device) -> nn.Module:
    """The model itself when test.amp resolves to off on `device`, else the model wrapped in AutocastDetector."""
    if isinstance(model, AutocastDetector) or resolve_test_amp(amp, device) == "off":
        return model
    return AutocastDetector(model, device.type)


def _to_float32(value: Any) -> Any:
    """Reduced-precision floating tensors inside lists / dicts / tuples back to float32."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value
