"""Selective search as a test-time proposal generator (TwoStageDetector's ``test_proposal_generator``).

Kept apart from detkit.modeling.proposals.selective_search, which runs without torch (detkit.deploy uses it).
"""
from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from detkit.errors import DetkitError
from detkit.modeling.proposals.selective_search import propose_image


class SelectiveSearchProposals(nn.Module):
    """A test-time proposal generator for detectors without an RPN (Fast R-CNN, R-CNN): selective search on each
    image, so that such a detector is callable on an image alone (TwoStageDetector's test_proposal_generator).

    In: N images (3, H, W) float in [0, 1]. Out: per image (P, 4) float32 x1, y1, x2, y2 in input pixels, OpenCV's
    rank order, the settings of ``propose_image`` (those of the proposal stores, ``proposals.*``). ``seconds`` adds
    up the time spent searching. No parameters: a detector's state_dict is the same with or without it.
    """

    def __init__(self, *, mode: str = "fast", max_side: int = 500, min_size: float = 1.0, top_k: int = 2000) -> None:
        super().__init__()
        if mode not in ("fast", "quality"):
            raise DetkitError(f"selective search mode must be 'fast' or 'quality', got {mode!r}")
        self.mode, self.max_side, self.min_size, self.top_k = mode, max_side, min_size, top_k
        self.seconds = 0.0

    def forward(self, images: list[Tensor]) -> list[Tensor]:
        """Proposals (P_i, 4) per image, on the images' device."""
        start = time.perf_counter()
        out = []
        for image in images:
            pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            boxes = propose_image(pixels, mode=self.mode, max_side=self.max_side, min_size=self.min_size,
                                  top_k=self.top_k)
            out.append(torch.from_numpy(boxes).to(image.device))
        self.seconds += time.perf_counter() - start
        return out
