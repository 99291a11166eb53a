"""RoI heads: sample proposals, pool their features, run the box head and predictor; losses or detections.

N images, R sampled regions over the batch, K + 1 classes with 0 = background. Boxes are x1, y1, x2, y2 in pixels
of the resized batch image. Sampling is hierarchical (Fast R-CNN §2.3): batch_size_per_image regions from each of
the N images, at most positive_fraction of them foreground (IoU >= fg_iou_thresh with a ground-truth box), the rest
background (IoU in [bg_iou_lo, bg_iou_thresh)); regions below bg_iou_lo are neither. Ground-truth boxes join the
proposals in training. The predictor owns scores, losses and inference (detkit.modeling.roi_heads.predictors);
the heads do sample -> pool -> box head -> predictor, whatever the three parts are.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detkit.box_ops import BoxCoder, box_iou
from detkit.matching import BalancedSampler, Matcher

IGNORED = -1


class RoIHeads(nn.Module):
    """Proposal sampling, pooling, box head and predictor; losses in training, detections in eval.

    ``proposal_matcher`` and ``sampler`` left None get Matcher(fg_iou_thresh, bg_iou_thresh) and
    BalancedSampler(batch_size_per_image, positive_fraction) (torchvision's style). ``chunk_size`` (eval only) runs
    pooler and box head on at most that many regions at a time (R-CNN's warped 227 x 227 regions would not fit at
    once); None runs all regions in one call.
    """

    def __init__(self, pooler: nn.Module, box_head: nn.Module, box_predictor: nn.Module, *,
                 proposal_matcher: Matcher | None = None, sampler: BalancedSampler | None = None,
                 chunk_size: int | None = None, fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, bg_iou_lo: float = 0.0,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 bbox_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0), score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, min_box_size: float = 1e-2) -> None:
        super().__init__()
        if not 0.0 <= bg_iou_lo <= bg_iou_thresh:
            raise ValueError(f"bg_iou_lo {bg_iou_lo} must be in [0, bg_iou_thresh = {bg_iou_thresh}]")
        self.pooler = pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.proposal_matcher = proposal_matcher or Matcher(fg_iou_thresh, bg_iou_thresh,
                                                            allow_low_quality_matches=False)
        self.bg_iou_lo = bg_iou_lo
        self.sampler = sampler or BalancedSampler(batch_size_per_image, positive_fraction)
        self.chunk_size = chunk_size
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
            return [], self.box_predictor.losses(self.box_head(self.pooler(features, proposals)), labels,
                                                 regression_targets)
        return self.box_predictor.inference(self.region_features(features, proposals), proposals, image_sizes,
                                            self.box_coder, score_thresh=self.score_thresh,
                                            nms_thresh=self.nms_thresh, detections_per_img=self.detections_per_img,
                                            min_box_size=self.min_box_size), {}

    def region_features(self, features: Sequence[Tensor], proposals: list[Tensor]) -> Any:
        """The box head's output for every region (rows in image order), pooled and run in chunks of chunk_size
        regions in eval mode; a tuple-valued box head (R-CNN's fc7, pool5) gives a tuple of float32 tensors."""
        if self.training or self.chunk_size is None:
            return self.box_head(self.pooler(features, proposals))
        boxes = torch.cat(proposals)
        image_index = torch.cat([torch.full((len(p),), i, dtype=torch.int64, device=boxes.device)
                                 for i, p in enumerate(proposals)])
        chunks = []
        for start in range(0, max(boxes.shape[0], 1), self.chunk_size):
            idx = slice(start, start + self.chunk_size)
            per_image = [boxes[idx][image_index[idx] == i] for i in range(len(proposals))]
            chunks.append(self.box_head(self.pooler(features, per_image)))
        if isinstance(chunks[0], tuple):
            return tuple(torch.cat([c[j].float() for c in chunks]) for j in range(len(chunks[0])))
        return torch.cat(chunks)

    def label_proposals(self, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per proposal: its class (0 background, -1 ignored) and the index of its ground-truth box (-1 none)."""
        if gt_boxes.numel() == 0:
            matches = torch.full((boxes.shape[0],), -1, dtype=torch.int64, device=boxes.device)
            label = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
            if self.bg_iou_lo > 0:  # IoU 0 with everything: below the background band
                label.fill_(IGNORED)
            return label, matches
        iou = box_iou(gt_boxes, boxes)
        matches = self.proposal_matcher(iou)
        label = gt_labels[matches.clamp(min=0)].to(torch.int64)
        label[matches < 0] = 0  # below bg_iou_thresh is background; thresholds equal leave no ignore band
        if self.bg_iou_lo > 0:
            label[(matches < 0) & (iou.max(dim=0).values < self.bg_iou_lo)] = IGNORED
        return label, matches

    def sample_proposals(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
                         ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Sampled proposals per image (ground truth added), their labels (R,) and regression targets (R, 4)."""
        sampled_boxes, labels, matched_gt = [], [], []
        for boxes, target in zip(proposals, targets):
            gt_boxes, gt_labels = target["boxes"].to(boxes.dtype), target["labels"]
            boxes = torch.cat([boxes, gt_boxes])
            label, matches = self.label_proposals(boxes.detach(), gt_boxes, gt_labels)
            if gt_boxes.numel() == 0:
                gt_boxes = boxes.new_zeros((1, 4))
            pos, neg = self.sampler([label])
            keep = torch.nonzero(pos[0] | neg[0]).squeeze(1)
            sampled_boxes.append(boxes[keep])
            labels.append(label[keep])
            matched_gt.append(gt_boxes[matches[keep].clamp(min=0)])
        # Targets from detached boxes: with differentiable proposals (exact joint training) the target must not
        # pull the proposal; the gradient reaches it only through the pooled features.
        regression_targets = self.box_coder.encode(torch.cat(matched_gt), torch.cat(sampled_boxes).detach())
        return sampled_boxes, torch.cat(labels), regression_targets
