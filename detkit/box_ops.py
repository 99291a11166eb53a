"""Box operations shared by every detector: IoU, area, clipping, small-box removal, and the box coder.

Boxes are (x1, y1, x2, y2) in absolute pixels, float32, with 0 <= x1 <= x2 and 0 <= y1 <= y2.
Deltas are (dx, dy, dw, dh) as in R-CNN: centre offsets in units of the reference box's size, log size ratios.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou, clip_boxes_to_image, remove_small_boxes

__all__ = ["box_area", "box_iou", "clip_boxes_to_image", "remove_small_boxes", "BoxCoder"]

# Largest log size ratio decode accepts: no box grows more than 1000/16 = 62.5x its reference
# (the stride-16 anchor could reach a 1000-pixel image), which keeps exp() finite early in training.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes as deltas relative to reference boxes, and decodes deltas back to boxes."""

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, target_boxes: Tensor, reference_boxes: Tensor) -> Tensor:
        """Deltas (R, 4) that turn reference_boxes (R, 4) into target_boxes (R, 4)."""
        wx, wy, ww, wh = self.weights
        ref = reference_boxes.float()
        tgt = target_boxes.float()
        ref_w = ref[:, 2] - ref[:, 0]
        ref_h = ref[:, 3] - ref[:, 1]
        ref_cx = ref[:, 0] + 0.5 * ref_w
        ref_cy = ref[:, 1] + 0.5 * ref_h
        tgt_w = tgt[:, 2] - tgt[:, 0]
        tgt_h = tgt[:, 3] - tgt[:, 1]
        tgt_cx = tgt[:, 0] + 0.5 * tgt_w
        tgt_cy = tgt[:, 1] + 0.5 * tgt_h
        return torch.stack((
            wx * (tgt_cx - ref_cx) / ref_w,
            wy * (tgt_cy - ref_cy) / ref_h,
            ww * torch.log(tgt_w / ref_w),
            wh * torch.log(tgt_h / ref_h),
        ), dim=1)

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """Boxes from deltas (R, 4*K) applied to reference_boxes (R, 4); returns (R, 4*K)."""
        wx, wy, ww, wh = self.weights
        ref = reference_boxes.to(deltas.dtype)
        widths = (ref[:, 2] - ref[:, 0])[:, None]
        heights = (ref[:, 3] - ref[:, 1])[:, None]
        ctr_x = ref[:, 0, None] + 0.5 * widths
        ctr_y = ref[:, 1, None] + 0.5 * heights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        pred_cx = dx * widths + ctr_x
        pred_cy = dy * heights + ctr_y
        half_w = 0.5 * torch.exp(dw) * widths
        half_h = 0.5 * torch.exp(dh) * heights
        boxes = torch.stack((pred_cx - half_w, pred_cy - half_h, pred_cx + half_w, pred_cy + half_h), dim=2)
        return boxes.flatten(1)
