"""Box predictor: class scores and class-specific box deltas for each region.

R regions, K + 1 classes (0 = background); scores (R, K + 1), deltas (R, 4 (K + 1)).
"""
from __future__ import annotations

from torch import Tensor, nn


class FastRCNNPredictor(nn.Module):
    """A linear classifier and a linear class-specific box regressor."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (R, K + 1) and box deltas (R, 4 (K + 1)) for features (R, D)."""
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)
