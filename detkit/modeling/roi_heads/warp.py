"""R-CNN's region warping (Girshick et al. 2014, §2.1 and appendix A): dilate, crop and warp each proposal.

R regions over N images. Boxes are x1, y1, x2, y2 in pixels of the (mean-subtracted, padded) batch image.
Each box is dilated about its centre so that, once warped to S x S, it is surrounded by ``context_pad`` pixels of
image context (appendix A: p = 16 at S = 227), then warped anisotropically (x and y scaled independently) to
S x S. Outside the image the warp reads zero, which in the mean-subtracted image *is* the mean pixel, as in the
reference code.

Why RoIAlign on the image: the crop-and-warp of every region of the batch is then one call through detkit.ops
(bilinear sampling, ``sampling_ratio`` points per output pixel and axis, averaged, which also smooths a large box
being shrunk), with no per-box Python loop and no host round trip; torchvision's roi_align reads zero for samples
more than one pixel outside the image, which gives the mean fill.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit import ops
from detkit.modeling.roi_heads.poolers import boxes_to_rois


def dilate_boxes(boxes: Tensor, warp_size: int, context_pad: int) -> Tensor:
    """Boxes (R, 4) grown about their centres by S / (S - 2p) per axis, so p warped pixels of context surround them."""
    if not 0 <= 2 * context_pad < warp_size:
        raise ValueError(f"context_pad {context_pad} must be >= 0 and < warp_size / 2 = {warp_size / 2}")
    scale = warp_size / (warp_size - 2 * context_pad)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return torch.cat([centre - half, centre + half], dim=1)


class RegionWarper(nn.Module):
    """Crops every region (with context) from the batch images and warps it to a (3, S, S) CNN input."""

    def __init__(self, warp_size: int = 227, context_pad: int = 16, sampling_ratio: int = 2) -> None:
        super().__init__()
        dilate_boxes(torch.zeros(0, 4), warp_size, context_pad)  # checks the pair
        self.warp_size = warp_size
        self.context_pad = context_pad
        self.sampling_ratio = sampling_ratio

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Warped regions (R, 3, S, S) of the batch images ``features[0]`` (N, 3, H, W) for the boxes of each image."""
        images = features[0]
        dilated = [dilate_boxes(b.to(torch.float32), self.warp_size, self.context_pad) for b in boxes]
        rois = boxes_to_rois(dilated)
        if rois.shape[0] == 0:
            return images.new_zeros((0, images.shape[1], self.warp_size, self.warp_size))
        return ops.roi_align(images, rois.to(images.dtype), (self.warp_size, self.warp_size), 1.0,
                             self.sampling_ratio, True)
