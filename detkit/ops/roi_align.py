"""RoIAlign (Mask R-CNN) on one feature map, with gradients for the features and the boxes.

N images, C channels, H x W feature map, R RoIs, oh x ow output bins. rois are Tensor[R, 5] rows
(batch_idx, x1, y1, x2, y2) or a list of N Tensor[Ri, 4], in input-image pixels; spatial_scale maps them onto
the feature map. Paths: Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1), gradient for features and
boxes; torchvision.ops.roi_align, gradient for features only; `roi_align_torch`, a pure-PyTorch version
used instead of torchvision when the boxes require grad, gradient for both.

Precision (every path, as torchvision's autocast kernels do): sampling and averaging run in float32 (float64 for
float64 input) whatever the input dtype and whether or not autocast is on; the result comes back in the input's
dtype. Half-precision features are upcast for torchvision (its CPU kernel accumulates float16 in float16).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import Tensor

from detkit.errors import DetkitError
from detkit.ops.dispatch import use_triton

TORCH_CHUNK = 128  # RoIs per contraction in roi_align_torch


def as_rois(boxes: Tensor | Sequence[Tensor], op: str) -> Tensor:
    """Return boxes as Tensor[R, 5] (batch_idx, x1, y1, x2, y2), accepting a list of Tensor[Ri, 4] per image."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise DetkitError(
                f"{op}: boxes must be a Tensor[R, 5] or a list of Tensor[Ri, 4], got shape {tuple(boxes.shape)}.")
        return boxes
    boxes = list(boxes)
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise DetkitError(f"{op}: boxes[{i}] must be a Tensor[Ri, 4], got {shape}.")
    if not boxes:
        raise DetkitError(f"{op}: boxes is an empty list; pass one Tensor[Ri, 4] per image.")
    idx = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([idx, torch.cat(boxes)], dim=1)


def pair(output_size: int | tuple[int, int], op: str) -> tuple[int, int]:
    """Return output_size as (oh, ow), checking both are positive ints."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if not (isinstance(oh, int) and isinstance(ow, int) and oh > 0 and ow > 0):
        raise DetkitError(f"{op}: output_size must be a positive int or (oh, ow), got {output_size!r}.")
    return oh, ow


def check_features(features: Tensor, op: str) -> None:
    """Raise unless features is a floating Tensor[N, C, H, W]."""
    if features.dim() != 4 or not features.is_floating_point():
        raise DetkitError(
            f"{op}: input must be a float Tensor[N, C, H, W], got {features.dtype} shape {tuple(features.shape)}.")


def roi_align(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Return RoIAlign features Tensor[R, C, oh, ow] (same semantics as torchvision.ops.roi_align)."""
    check_features(input, "roi_align")
    rois = as_rois(boxes, "roi_align")
    oh, ow = pair(output_size, "roi_align")
    if use_triton("roi_align", input):
        from detkit.ops.kernels.roi_align import roi_align_triton

        return roi_align_triton([input], rois, None, (oh, ow), [spatial_scale], sampling_ratio, aligned)
    return roi_align_reference(input, rois, (oh, ow), spatial_scale, sampling_ratio, aligned)


def roi_align_reference(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """Return RoIAlign by torchvision, or by `roi_align_torch` when the boxes need a gradient."""
    if rois.requires_grad and torch.is_grad_enabled():
        return roi_align_torch(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    common = torchvision_dtype(input, rois)
    if common != input.dtype or common != rois.dtype:
        out = torchvision.ops.roi_align(
            input.to(common), rois.to(common), output_size, spatial_scale, sampling_ratio, aligned)
        return out.to(input.dtype)
    return torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def torchvision_dtype(input: Tensor, rois: Tensor) -> torch.dtype:
    """Return the dtype for torchvision's RoI kernels: float32, or float64 when input or rois are float64."""
    return torch.promote_types(torch.promote_types(rois.dtype, input.dtype), torch.float32)


def _axis_weights(
    start: Tensor, length: Tensor, bins: int, grid: Tensor, size: int, max_grid: int
) -> tuple[Tensor, Tensor]:
    """Return per-RoI interpolation weights [R, bins, size] along one axis and the sample validity [R, bins, G]."""
    r = start.shape[0]
    bin_size = length / bins
    p = torch.arange(bins, device=start.device, dtype=start.dtype).view(1, bins, 1)
    g = torch.arange(max_grid, device=start.device, dtype=start.dtype).view(1, 1, max_grid)
    gridf = grid.to(start.dtype).clamp(min=1).view(r, 1, 1)
    pos = start.view(r, 1, 1) + p * bin_size.view(r, 1, 1) + (g + 0.5) * bin_size.view(r, 1, 1) / gridf
    used = (g < grid.view(r, 1, 1)) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.detach().floor().long()
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    high = torch.where(at_edge, low, low + 1)
    w = torch.zeros(r, bins, max_grid, size, device=start.device, dtype=start.dtype)
    w = w.scatter_add(3, low.unsqueeze(3), ((1 - frac) * used).unsqueeze(3))
    w = w.scatter_add(3, high.unsqueeze(3), (frac * used).unsqueeze(3))
    return w.sum(2), used


def roi_align_torch(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """Return RoIAlign in pure PyTorch, differentiable w.r.t. input and rois (torchvision's formula, separable)."""
    # torchvision's autocast policy: RoIAlign runs in float32 even inside autocast (the einsum would drop to bf16).
    with torch.autocast(input.device.type, enabled=False):
        return _roi_align_torch(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def _roi_align_torch(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    oh, ow = output_size
    n, c, h, w = input.shape
    r = rois.shape[0]
    dtype = torch.promote_types(torch.promote_types(input.dtype, rois.dtype), torch.float32)
    rois = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, k] * spatial_scale - offset for k in range(1, 5))
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    if sampling_ratio > 0:
        gy = gx = torch.full((r,), sampling_ratio, device=rois.device, dtype=torch.int64)
    else:
        gy, gx = torch.ceil(rh.detach() / oh).long(), torch.ceil(rw.detach() / ow).long()
    max_grid = max(int(torch.cat([gy, gx]).max()) if r else 1, 1)
    wy, _ = _axis_weights(y1, rh, oh, gy, h, max_grid)
    wx, _ = _axis_weights(x1, rw, ow, gx, w, max_grid)
    count = (gy * gx).clamp(min=1).to(dtype).view(r, 1, 1, 1)
    out = input.new_zeros((r, c, oh, ow), dtype=dtype)
    batch = rois[:, 0].detach().long()
    for i in range(n):
        feature = input[i].to(dtype)
        # chunks bound the [rois, oh, C, W] intermediate of the contraction
        for sel in (batch == i).nonzero().squeeze(1).split(TORCH_CHUNK):
            pooled = torch.einsum("rph,chw,rqw->rcpq", wy[sel], feature, wx[sel])
            out.index_put_((sel,), pooled / count[sel])
    return out.to(input.dtype)
