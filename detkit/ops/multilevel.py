"""RoIAlign over an FPN pyramid: each RoI pooled from the level chosen for it.

L levels, N images, C channels (the same on every level), R RoIs; rois are Tensor[R, 5] rows
(batch_idx, x1, y1, x2, y2) in input-image pixels; levels[r] indexes `features` and `spatial_scales`.
The Triton path pools all levels in one launch; the fallback loops levels (torchvision, or pure PyTorch
when the rois require grad).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.errors import DetkitError
from detkit.ops.dispatch import use_triton
from detkit.ops.roi_align import as_rois, check_features, pair, roi_align_reference

MAX_LEVELS = 5  # P2..P6; the Triton kernel takes one pointer argument per level


def multi_level_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Return Tensor[R, C, oh, ow]: RoIAlign of rois[r] on features[levels[r]] at spatial_scales[levels[r]]."""
    features = list(features)
    scales = [float(s) for s in spatial_scales]
    if not 1 <= len(features) <= MAX_LEVELS:
        raise DetkitError(f"multi_level_roi_align: features must hold 1 to {MAX_LEVELS} levels, got {len(features)}.")
    if len(scales) != len(features):
        raise DetkitError(
            f"multi_level_roi_align: spatial_scales has {len(scales)} entries for {len(features)} levels.")
    for i, f in enumerate(features):
        check_features(f, f"multi_level_roi_align: features[{i}]")
        first = features[0]
        if f.shape[:2] != first.shape[:2] or f.dtype != first.dtype or f.device != first.device:
            raise DetkitError(
                f"multi_level_roi_align: features[{i}] is {f.dtype} {tuple(f.shape)} on {f.device}; every level must "
                f"share N, C, dtype and device with features[0] ({first.dtype} {tuple(first.shape)} on {first.device})."
            )
    rois = as_rois(rois, "multi_level_roi_align")
    if levels.dim() != 1 or levels.shape[0] != rois.shape[0]:
        raise DetkitError(
            f"multi_level_roi_align: levels must be a Tensor[{rois.shape[0]}], got shape {tuple(levels.shape)}.")
    oh, ow = pair(output_size, "multi_level_roi_align")
    if use_triton("multi_level_roi_align", features[0]):
        from detkit.ops.kernels.roi_align import roi_align_triton

        return roi_align_triton(features, rois, levels, (oh, ow), scales, sampling_ratio, aligned)
    if torch.jit.is_tracing():
        return _traced_multi_level(features, rois, levels, (oh, ow), scales, sampling_ratio, aligned)
    n, c = features[0].shape[:2]
    out = features[0].new_zeros((rois.shape[0], c, oh, ow))
    for level, (feature, scale) in enumerate(zip(features, scales)):
        sel = (levels == level).nonzero().squeeze(1)
        # Every level is pooled, an empty one too, so that every level gets a gradient (zeros where no RoI fell, as
        # from the Triton kernel): DistributedDataParallel needs a gradient for every trainable parameter in each
        # step (an FPN level's convolution feeds only the pooler in a Fast R-CNN), and one process then updates
        # what several processes update.
        pooled = roi_align_reference(feature, rois[sel], (oh, ow), scale, sampling_ratio, aligned)
        out.index_put_((sel,), pooled.to(out.dtype))  # in place: out-of-place would copy all R rows per level
    return out


def _traced_multi_level(features: Sequence[Tensor], rois: Tensor, levels: Tensor, output_size: tuple[int, int],
                        scales: Sequence[float], sampling_ratio: int, aligned: bool) -> Tensor:
    """The same result as the loop above, in a form an exported graph runs well at any RoI count: every level is
    pooled (any may be empty), the levels' rows are concatenated and put back in RoI order with one gather (ONNX
    Gather) instead of a zero-filled output and one ScatterND per level."""
    selected, pooled = [], []
    for level, (feature, scale) in enumerate(zip(features, scales)):
        sel = (levels == level).nonzero().squeeze(1)
        selected.append(sel)
        pooled.append(roi_align_reference(feature, rois[sel], output_size, scale, sampling_ratio, aligned))
    order = torch.cat(selected)  # a permutation of 0..R-1: every RoI has exactly one level
    return torch.cat(pooled).index_select(0, torch.argsort(order))
