"""RoIPool (Fast R-CNN): max over each of oh x ow bins, gradient for the features only.

N images, C channels, R RoIs; rois are Tensor[R, 5] rows (batch_idx, x1, y1, x2, y2) or a list of N
Tensor[Ri, 4], in input-image pixels; spatial_scale maps them onto the feature map. Same semantics as
torchvision.ops.roi_pool (box corners rounded to the nearest cell, empty bins give 0).
"""
from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import Tensor

from detkit.ops.dispatch import use_triton
from detkit.ops.roi_align import as_rois, check_features, pair, torchvision_dtype


def roi_pool(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Return RoIPool features Tensor[R, C, oh, ow] (same as torchvision.ops.roi_pool)."""
    check_features(input, "roi_pool")
    rois = as_rois(boxes, "roi_pool")
    oh, ow = pair(output_size, "roi_pool")
    if use_triton("roi_pool", input):
        from detkit.ops.kernels.roi_pool import roi_pool_triton

        return roi_pool_triton(input, rois, (oh, ow), spatial_scale)
    common = torchvision_dtype(input, rois)
    if common != input.dtype or common != rois.dtype:
        out = torchvision.ops.roi_pool(input.to(common), rois.detach().to(common), (oh, ow), spatial_scale)
        return out.to(input.dtype)
    return torchvision.ops.roi_pool(input, rois.detach(), (oh, ow), spatial_scale)
