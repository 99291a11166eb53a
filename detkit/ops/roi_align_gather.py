"""RoIAlign as one gather over channels-last features, for inference on the CPU.

torchvision's CPU RoIAlign loops over RoIs on one thread, per channel plane, in float32 (bf16 features are copied
to float32 first). Here every output bin is a weighted sum of (2 * sampling_ratio)^2 feature vectors (two bilinear
taps per sample and axis), computed by `torch.nn.functional.embedding_bag` (mode "sum" with per-sample weights:
ATen's multi-threaded, vectorised CPU kernel) over the feature maps of all levels flattened to rows of C channels,
in the features' own dtype (bf16 stays bf16). The sample points, the bilinear weights, the zero outside
[-1, size] and the clamping at the border are torchvision's (roi_align_kernel.cpp, bilinear_interpolate); the
output equals torchvision.ops.roi_align up to float rounding (and bf16 rounding of the weights for bf16 features).

Shapes: L levels of features (N, C, H_l, W_l), R RoIs as (R, 5) rows (image index, x1, y1, x2, y2) in pixels of the
padded batch image, levels (R,) int64 (the level each RoI samples), output (R, C, PH, PW). No gradient.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit.errors import DetkitError


def axis_taps(start: Tensor, length: Tensor, size: Tensor, bins: int, ratio: int) -> tuple[Tensor, Tensor]:
    """Feature indices (R, bins, 2 * ratio) int64 and bilinear weights (R, bins, 2 * ratio) along one axis: for each
    bin its `ratio` sample points, each as a (low, high) pair of taps; zero weight for a sample outside [-1, size]."""
    k = torch.arange(bins * ratio, dtype=start.dtype, device=start.device)
    pos = start[:, None] + (k + 0.5) * (length[:, None] / (bins * ratio))
    size = size[:, None].to(pos.dtype)
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = torch.minimum(pos.floor(), size - 1)
    pos = torch.where(low >= size - 1, low, pos)
    frac = pos - low
    high = torch.minimum(low + 1, size - 1)
    index = torch.stack([low, high], -1).long()
    weight = torch.stack([1 - frac, frac], -1) * valid[..., None]
    return index.view(-1, bins, 2 * ratio), weight.view(-1, bins, 2 * ratio)


@torch.no_grad()
def roi_align_gather(features: Sequence[Tensor], rois: Tensor, levels: Tensor, output_size: tuple[int, int],
                     spatial_scales: Sequence[float], sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign (R, C, PH, PW) of rois[r] on features[levels[r]] at spatial_scales[levels[r]], as torchvision's
    roi_align with a fixed sampling_ratio > 0; in the features' dtype, without gradient."""
    if sampling_ratio <= 0:
        raise DetkitError(f"roi_align_gather: sampling_ratio must be > 0 (the adaptive grid is torchvision's), "
                          f"got {sampling_ratio}.")
    ph, pw = output_size
    n, c = features[0].shape[:2]
    dtype = features[0].dtype
    if rois.shape[0] == 0:
        return features[0].new_zeros((0, c, ph, pw))
    # all levels as one table of rows (N * H * W over levels, C): a view for channels-last maps, else one copy
    table = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, c) for f in features]) if len(features) > 1 else \
        features[0].permute(0, 2, 3, 1).reshape(-1, c)
    sizes = torch.tensor([[f.shape[2], f.shape[3]] for f in features], device=rois.device)
    offsets = torch.tensor([0] + [f.numel() // c for f in features[:-1]], device=rois.device).cumsum(0)
    scale = torch.tensor(list(spatial_scales), dtype=rois.dtype, device=rois.device)[levels]
    h, w = sizes[levels, 0], sizes[levels, 1]
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, k] * scale - offset for k in range(1, 5))
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    iy, wy = axis_taps(y1, rh, h, ph, sampling_ratio)
    ix, wx = axis_taps(x1, rw, w, pw, sampling_ratio)
    base = offsets[levels] + rois[:, 0].long() * h * w
    taps = (2 * sampling_ratio) ** 2
    index = (base.view(-1, 1, 1, 1, 1) + (iy * w.view(-1, 1, 1))[:, :, None, :, None] + ix[:, None, :, None, :])
    weight = (wy[:, :, None, :, None] * wx[:, None, :, None, :]) / sampling_ratio ** 2
    out = F.embedding_bag(index.view(-1, taps), table, per_sample_weights=weight.view(-1, taps).to(dtype),
                          mode="sum")
    return out.view(-1, ph, pw, c).permute(0, 3, 1, 2)
