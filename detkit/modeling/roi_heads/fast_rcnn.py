"""Fast R-CNN RoI heads: sample proposals, pool, classify and refine them; losses and post-processing.

N images, R sampled regions over the batch, K + 1 classes with 0 = background. Boxes are x1, y1, x2, y2 in pixels
of the resized batch image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.box_ops import BoxCoder, box_iou, clip_boxes_to_image, remove_small_boxes
from detkit.matching import BalancedSampler, Matcher
from detkit.ops import batched_nms


def fast_rcnn_losses(class_logits: Tensor, box_deltas: Tensor, labels: Tensor,
                     regression_targets: Tensor) -> dict[str, Tensor]:
    """Cross-entropy over all sampled regions; smooth-L1 on the true class's deltas of foreground regions."""
    cls_loss = F.cross_entropy(class_logits, labels)
    fg = torch.nonzero(labels > 0).squeeze(1)
    deltas = box_deltas.view(box_deltas.shape[0], -1, 4)[fg, labels[fg]]
    # Normalised by all sampled regions (not only foreground), as in the Fast R-CNN reference code.
    box_loss = F.smooth_l1_loss(deltas, regression_targets[fg], beta=1 / 9, reduction="sum") / max(labels.numel(), 1)
    return {"loss_classifier": cls_loss, "loss_box_reg": box_loss}


class RoIHeads(nn.Module):
    """Proposal sampling, pooling, box head and predictor; losses in training, detections in eval."""

    def __init__(self, pooler: nn.Module, box_head: nn.Module, box_predictor: nn.Module, *,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, bbox_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0),
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 min_box_size: float = 1e-2) -> None:
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_box_size = min_box_size

    def forward(self, features: Sequence[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections per image (empty in training) and losses (empty in eval)."""
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            proposals, labels, regression_targets = self.sample_proposals(proposals, targets)
        box_features = self.box_head(self.pooler(features, proposals))
        class_logits, box_deltas = self.box_predictor(box_features)
        if self.training:
            return [], fast_rcnn_losses(class_logits.float(), box_deltas.float(), labels, regression_targets)
        return self.postprocess(class_logits.float(), box_deltas.float(), proposals, image_sizes), {}

    def sample_proposals(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
                         ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Sampled proposals per image (ground truth added), their labels (R,) and regression targets (R, 4)."""
        sampled_boxes, labels, matched_gt = [], [], []
        for boxes, target in zip(proposals, targets):
            gt_boxes, gt_labels = target["boxes"].to(boxes.dtype), target["labels"]
            boxes = torch.cat([boxes, gt_boxes])
            if gt_boxes.numel() == 0:
                matches = torch.full((boxes.shape[0],), -1, dtype=torch.int64, device=boxes.device)
                label = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
                gt_boxes = boxes.new_zeros((1, 4))
            else:
                matches = self.proposal_matcher(box_iou(gt_boxes, boxes))
                label = gt_labels[matches.clamp(min=0)].to(torch.int64)
                label[matches < 0] = 0  # below bg_iou_thresh is background; thresholds equal leave no ignore band
            pos, neg = self.sampler([label])
            keep = torch.nonzero(pos[0] | neg[0]).squeeze(1)
            sampled_boxes.append(boxes[keep])
            labels.append(label[keep])
            matched_gt.append(gt_boxes[matches[keep].clamp(min=0)])
        regression_targets = self.box_coder.encode(torch.cat(matched_gt), torch.cat(sampled_boxes))
        return sampled_boxes, torch.cat(labels), regression_targets

    def postprocess(self, class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                    image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Decode, clip, drop background and low scores, per-class NMS, keep the top detections of each image."""
        num_classes = class_logits.shape[1]
        counts = [p.shape[0] for p in proposals]
        boxes_all = self.box_coder.decode(box_deltas, torch.cat(proposals)).view(-1, num_classes, 4)
        scores_all = F.softmax(class_logits, dim=-1)
        device = class_logits.device
        cand_boxes, cand_scores, cand_labels, cand_image = [], [], [], []
        for i, (boxes, scores) in enumerate(zip(boxes_all.split(counts), scores_all.split(counts))):
            boxes = clip_boxes_to_image(boxes, image_sizes[i])[:, 1:].reshape(-1, 4)
            labels = torch.arange(1, num_classes, device=device).expand(scores.shape[0], -1).reshape(-1)
            scores = scores[:, 1:].reshape(-1)
            keep = torch.nonzero(scores > self.score_thresh).squeeze(1)
            keep = keep[remove_small_boxes(boxes[keep], self.min_box_size)]
            cand_boxes.append(boxes[keep])
            cand_scores.append(scores[keep])
            cand_labels.append(labels[keep])
            cand_image.append(torch.full_like(keep, i))
        boxes, scores = torch.cat(cand_boxes), torch.cat(cand_scores)
        labels, image = torch.cat(cand_labels), torch.cat(cand_image)
        # One NMS call for the whole batch: each (image, class) pair is its own group.
        keep = batched_nms(boxes, scores, labels + image * num_classes, self.nms_thresh)
        kept_image = image[keep]
        detections = []
        for i in range(len(proposals)):
            idx = keep[kept_image == i][: self.detections_per_img]
            detections.append({"boxes": boxes[idx], "labels": labels[idx], "scores": scores[idx]})
        return detections
