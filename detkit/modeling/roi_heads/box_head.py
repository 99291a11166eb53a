"""Box heads: per-region feature extractors between the pooler and the predictor.

R regions; input (R, C, S, S) pooled features; output (R, D) vectors.
FPN uses the 2-MLP head; VGG16 uses fc6/fc7 and ResNet-C4 the res5 stage (both from detkit.modeling.backbones).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TwoMLPHead(nn.Module):
    """Two fully connected layers with ReLU (the FPN paper's box head)."""

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_channels = representation_size

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, representation_size)."""
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))
