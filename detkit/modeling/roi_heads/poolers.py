"""RoI pooler: fixed-size features for each region, from one feature map or from the right FPN level.

R regions over N images, C channels, output S x S. Boxes are x1, y1, x2, y2 in pixels of the padded batch image;
a level of stride s samples them at spatial_scale 1/s.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit import ops
from detkit.registries import POOLERS


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """(R, 5) rows of (image index, x1, y1, x2, y2) from a list of (R_i, 4) boxes."""
    rows = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows, dim=0)


class LevelMapper:
    """FPN paper eq. (1): level k = floor(k0 + log2(sqrt(area) / 224)), clamped to the levels there are."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: float = 224.0, canonical_level: int = 4,
                 eps: float = 1e-6) -> None:
        self.k_min, self.k_max = k_min, k_max
        self.canonical_scale, self.canonical_level, self.eps = canonical_scale, canonical_level, eps

    def __call__(self, boxes: Tensor) -> Tensor:
        """Index (R,) int64 into the pooled levels, 0 for the finest."""
        sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        levels = torch.floor(self.canonical_level + torch.log2(sizes / self.canonical_scale) + self.eps)
        return (levels.clamp(self.k_min, self.k_max) - self.k_min).to(torch.int64)


class RoIPooler(nn.Module):
    """RoIAlign or RoIPool over one or several feature maps (strides given, finest first)."""

    def __init__(self, output_size: int, strides: Sequence[int], *, sampling_ratio: int = 2,
                 pooler_type: str = "roi_align", aligned: bool = True) -> None:
        super().__init__()
        if pooler_type not in POOLERS:
            raise ValueError(f"pooler_type must be roi_align or roi_pool, got {pooler_type!r}")
        self.output_size = (output_size, output_size)
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.pooler_type = pooler_type
        self.aligned = aligned
        levels = [int(round(math.log2(s))) for s in strides]
        self.level_mapper = LevelMapper(levels[0], levels[-1])

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pooled features (R, C, S, S) for the boxes of every image, in image order."""
        rois = boxes_to_rois(boxes)  # float32 even for half features: 0.5 px matters at 1333
        if len(features) == 1:
            return self._pool_one(features[0], rois, self.scales[0])
        levels = self.level_mapper(rois[:, 1:])
        if self.pooler_type == "roi_align":
            return ops.multi_level_roi_align(features, rois, levels, self.output_size, self.scales,
                                             self.sampling_ratio, self.aligned)
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.nonzero(levels == level).squeeze(1)
            out[idx] = self._pool_one(feature, rois[idx], scale).to(out.dtype)
        return out

    def _pool_one(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.pooler_type == "roi_pool":
            return ops.roi_pool(feature, rois, self.output_size, scale)
        return ops.roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)
