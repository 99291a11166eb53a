"""Test-time RoI pooler for the CPU: RoIAlign as one gather over all FPN levels (detkit.ops.roi_align_gather), in
the features' dtype, instead of torchvision's one-thread float32 kernel per level (`test.gather_roi_align`).

Same output as RoIPooler up to float rounding: (R, C, S, S) for the boxes (x1, y1, x2, y2 in pixels of the padded
batch image) of every image, in image order. On CUDA, with gradients, or for roi_pool it is RoIPooler itself.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit.ops.roi_align_gather import roi_align_gather
from detkit.modeling.roi_heads.poolers import RoIPooler, boxes_to_rois


class GatherRoIPooler(RoIPooler):
    """RoIPooler whose CPU inference path is roi_align_gather (one call for all levels)."""

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pooled features (R, C, S, S), as RoIPooler.forward."""
        if (features[0].device.type != "cpu" or torch.is_grad_enabled() or self.pooler_type != "roi_align"
                or torch.jit.is_tracing()):  # ONNX export: the RoiAlign operator, not embedding_bag's gather
            return super().forward(features, boxes)
        rois = boxes_to_rois(boxes)
        if len(features) == 1:
            levels = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
        else:
            levels = self.level_mapper(rois[:, 1:])
        return roi_align_gather(features, rois, levels, self.output_size, self.scales, self.sampling_ratio,
                                self.aligned)


def use_gather_pooler(model: nn.Module) -> bool:
    """Swap a detector's RoIAlign pooler (model.roi_heads.pooler, fixed sampling_ratio > 0) for a GatherRoIPooler
    with the same settings, in place; True when swapped (False for roi_pool, the adaptive grid, R-CNN's warp)."""
    heads = getattr(model, "roi_heads", None)
    pooler = getattr(heads, "pooler", None)
    if type(pooler) is not RoIPooler or pooler.pooler_type != "roi_align" or pooler.sampling_ratio <= 0:
        return False
    strides = [int(round(1.0 / s)) for s in pooler.scales]
    heads.pooler = GatherRoIPooler(pooler.output_size[0], strides, sampling_ratio=pooler.sampling_ratio,
                                   aligned=pooler.aligned)
    heads.pooler.output_size = pooler.output_size
    return True
