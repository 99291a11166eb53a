"""R-CNN's RoI heads: warp each region, run the whole CNN on it, then a softmax (fine-tuning) or SVMs (test).

N images, R regions over the batch, K foreground classes (labels 1..K, 0 = background). Boxes are x1, y1, x2, y2
in pixels of the resized batch image. Fine-tuning (§2.3) samples like Fast R-CNN's heads but only classifies:
foreground = IoU >= 0.5 with a ground-truth box, background otherwise, 32 foreground and 96 background windows per
mini-batch of 128. At test time: SVM margins, class-specific box regression, per-class NMS at IoU 0.3 (§2.2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit.box_ops import BoxCoder, clip_boxes_to_image, remove_small_boxes
from detkit.engine.distributed import global_mean_count
from detkit.modeling.roi_heads.roi_heads import RoIHeads
from detkit.ops import batched_nms


class RCNNHeads(RoIHeads):
    """Region warper (the pooler), region CNN (the box head) and SVMPredictor, wired as RoIHeads are."""

    def forward(self, features: Sequence[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections per image (empty in training) and the fine-tuning loss (empty in eval)."""
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            proposals, labels, _ = self.sample_proposals(proposals, targets)
            fc7, _ = self.box_head(self.pooler(features, proposals))
            logits = self.box_predictor(fc7).float()
            # Per-region mean over the global batch, as fast_rcnn_losses (one process: cross_entropy's mean).
            normalizer = global_mean_count(labels.new_tensor(labels.numel()))
            if labels.numel() == 0:
                return [], {"loss_classifier": logits.sum() * 0}
            return [], {"loss_classifier": F.cross_entropy(logits, labels, reduction="sum") / normalizer}
        fc7, pool5 = self.region_features(features, proposals)
        scores = self.box_predictor.svm_scores(fc7)
        deltas = self.box_predictor.box_deltas(pool5)
        return rcnn_inference(scores, deltas, proposals, image_sizes, self.box_coder, score_thresh=self.score_thresh,
                              nms_thresh=self.nms_thresh, detections_per_img=self.detections_per_img,
                              min_box_size=self.min_box_size), {}

    def region_features(self, features: Sequence[Tensor], proposals: list[Tensor],
                        chunk: int = 256) -> tuple[Tensor, Tensor]:
        """fc7 (R, D) and pool5 (R, D5) of every region, warped and run in chunks of ``chunk`` regions."""
        boxes = torch.cat(proposals)
        image_index = torch.cat([torch.full((len(p),), i, dtype=torch.int64, device=boxes.device)
                                 for i, p in enumerate(proposals)])
        fc7s, pool5s = [], []
        for start in range(0, max(boxes.shape[0], 1), chunk):
            idx = slice(start, start + chunk)
            per_image = [boxes[idx][image_index[idx] == i] for i in range(len(proposals))]
            fc7, pool5 = self.box_head(self.pooler(features, per_image))
            fc7s.append(fc7.float())
            pool5s.append(pool5.float())
        return torch.cat(fc7s), torch.cat(pool5s)


def rcnn_inference(scores: Tensor, box_deltas: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                   box_coder: BoxCoder, *, score_thresh: float, nms_thresh: float, detections_per_img: int,
                   min_box_size: float) -> list[dict[str, Tensor]]:
    """Per image: regressed, clipped boxes with SVM margins (R, K) above score_thresh, per-class NMS, top scores."""
    num_fg = scores.shape[1]
    counts = [p.shape[0] for p in proposals]
    boxes_all = box_coder.decode(box_deltas, torch.cat(proposals).float()).view(-1, num_fg, 4)
    detections = []
    for i, (boxes, margins) in enumerate(zip(boxes_all.split(counts), scores.split(counts))):
        boxes = clip_boxes_to_image(boxes, image_sizes[i]).reshape(-1, 4)
        labels = torch.arange(1, num_fg + 1, device=scores.device).expand(margins.shape[0], -1).reshape(-1)
        margins = margins.reshape(-1)
        keep = torch.nonzero(margins > score_thresh).squeeze(1)
        keep = keep[remove_small_boxes(boxes[keep], min_box_size)]
        boxes, margins, labels = boxes[keep], margins[keep], labels[keep]
        keep = batched_nms(boxes, margins, labels, nms_thresh)[:detections_per_img]
        detections.append({"boxes": boxes[keep], "labels": labels[keep], "scores": margins[keep]})
    return detections
