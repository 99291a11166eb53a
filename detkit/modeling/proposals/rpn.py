"""Region Proposal Network (Faster R-CNN §3.1): objectness and box deltas for every anchor, then proposals.

N images, L feature levels, A anchors per cell, T = sum over levels of H*W*A anchors per image, M ground-truth
boxes in an image. Boxes are x1, y1, x2, y2 in pixels of the resized (padded) batch image.

Proposals are decoded from detached deltas (approximate joint training, Ren et al. 2015 §3.2) unless
``differentiable_proposals`` is set (exact joint training): then each kept proposal's coordinates carry the graph
of the box-regression branch, so a loss on features pooled from them (RoIAlign's box gradient) reaches the RPN.
Some terms stay zero by construction: which anchors survive top-k, NMS and the small-box filter is a discrete
choice (no gradient, and the objectness logits get none from the detector), a coordinate clipped to the image or
a size ratio clamped at log(1000 / 16) has slope 0. Within that fixed selection the gradient is exact, which is
the "non-approximate" sense of the paper, made possible by the RoI warping layer of Dai et al. 2015 (Instance-aware
Semantic Segmentation via Multi-task Network Cascades, §3.3), differentiable with respect to the box.

``proposal_grad_scale`` weighs that path (the forward values are unchanged): d(box)/d(delta) is the anchor's size in
pixels, so unweighted the detector's losses can swamp the RPN's own box loss. The weight is a loss weight like
the paper's lambda, chosen by measurement: docs/benchmarks.md, "Training schedules", has the figures.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import _topk_min

from detkit.box_ops import BoxCoder, box_iou, clip_boxes_to_image, remove_small_boxes
from detkit.ranks import global_mean_count
from detkit.matching import BETWEEN_THRESHOLDS, BalancedSampler, Matcher
from detkit.modeling.proposals.anchors import AnchorGenerator
from detkit.ops import batched_nms


class RPNHead(nn.Module):
    """A 3x3 conv shared by all levels, then 1x1 convs for A objectness logits and 4A deltas per cell."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness (N, A, H, W) and deltas (N, 4A, H, W)."""
        logits, deltas = [], []
        for feature in features:
            t = F.relu(self.conv(feature))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def _flatten_level(x: Tensor, channels: int) -> Tensor:
    """(N, A*C, H, W) -> (N, H*W*A, C), the anchor order of AnchorGenerator."""
    n, _, h, w = x.shape
    return x.view(n, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, channels)


def rpn_losses(objectness: Tensor, deltas: Tensor, labels: Tensor, regression_targets: Tensor,
               sampled_pos: Tensor, sampled_neg: Tensor) -> dict[str, Tensor]:
    """Binary cross-entropy over sampled anchors and smooth-L1 over positive ones, both per sampled anchor.

    Sums divided by global_mean_count of this process's sampled anchors: their number alone; under data-parallel
    training the mean over ranks, so that DDP's gradient average is the global batch's per-anchor mean (see
    detkit.ranks.global_mean_count). Every rank must call it (it all-reduces the count).
    """
    sampled = sampled_pos | sampled_neg
    num_sampled = global_mean_count(sampled.sum())
    # beta = 1/9: the RPN's smooth-L1 switch point from the Faster R-CNN reference code.
    box_loss = F.smooth_l1_loss(deltas[sampled_pos], regression_targets[sampled_pos], beta=1 / 9,
                                reduction="sum") / num_sampled
    cls_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled].float(), reduction="sum")
    return {"loss_rpn_cls": cls_loss / num_sampled, "loss_rpn_box_reg": box_loss}


class RegionProposalNetwork(nn.Module):
    """Anchors + head + proposal selection; in training also the RPN losses."""

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, *, fg_iou_thresh: float = 0.7,
                 bg_iou_thresh: float = 0.3, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n: dict[str, int] | None = None, post_nms_top_n: dict[str, int] | None = None,
                 nms_thresh: float = 0.7, score_thresh: float = 0.0, min_size: float = 1e-3,
                 differentiable_proposals: bool = False, proposal_grad_scale: float = 1.0) -> None:
        super().__init__()
        self.differentiable_proposals = differentiable_proposals  # exact joint training (see the module docstring)
        self.proposal_grad_scale = proposal_grad_scale  # weight of the detector's gradient into the proposals
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 1000}
        self.post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 1000}
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    def forward(self, image_size: tuple[int, int], image_sizes: list[tuple[int, int]], features: Sequence[Tensor],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals (P_i, 4) per image, sorted by objectness, and the losses (empty in eval)."""
        logits, deltas = self.head(features)
        anchors_per_level = self.anchor_generator(image_size, [f.shape[-2:] for f in features], features[0].device)
        anchors = torch.cat(anchors_per_level)
        counts = [a.shape[0] for a in anchors_per_level]
        objectness = torch.cat([_flatten_level(x, 1) for x in logits], dim=1).squeeze(2)  # (N, T)
        box_deltas = torch.cat([_flatten_level(x, 4) for x in deltas], dim=1)  # (N, T, 4)
        num_images = objectness.shape[0]
        decoded = box_deltas.detach()
        if self.differentiable_proposals and self.training:  # same values, gradient weighted by proposal_grad_scale
            decoded = decoded + self.proposal_grad_scale * (box_deltas - decoded)
        proposals = self.box_coder.decode(decoded.reshape(-1, 4).float(),
                                          anchors.repeat(num_images, 1)).view(num_images, -1, 4)
        boxes = self.select_proposals(proposals, objectness.detach().float(), image_sizes, counts)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            labels, regression_targets = self.assign_targets(anchors, targets)
            pos, neg = self.sampler(list(labels))
            losses = rpn_losses(objectness.float(), box_deltas.float(), labels, regression_targets,
                                torch.stack(pos), torch.stack(neg))
        return boxes, losses

    def assign_targets(self, anchors: Tensor, targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Labels (N, T): 1 object, 0 background, -1 ignored; regression targets (N, T, 4)."""
        labels, regression_targets = [], []
        for target in targets:
            gt = target["boxes"]
            if gt.numel() == 0:
                labels.append(torch.zeros(anchors.shape[0], device=anchors.device))
                regression_targets.append(torch.zeros_like(anchors))
                continue
            matches = self.proposal_matcher(box_iou(gt, anchors))
            label = (matches >= 0).float()
            label[matches == BETWEEN_THRESHOLDS] = -1.0
            labels.append(label)
            regression_targets.append(self.box_coder.encode(gt[matches.clamp(min=0)], anchors))
        return torch.stack(labels), torch.stack(regression_targets)

    def select_proposals(self, proposals: Tensor, objectness: Tensor, image_sizes: list[tuple[int, int]],
                         counts: list[int]) -> list[Tensor]:
        """Top-k per level, clip, drop tiny and low-score boxes, NMS per image and level, keep the post-NMS top-k."""
        num_images = proposals.shape[0]
        device = proposals.device
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(counts)])
        top_idx, offset = [], 0
        for n in counts:
            level = objectness[:, offset:offset + n]
            k = _topk_min(level, self.pre_nms_top_n[self._mode()], 1)  # min(k, n), a tensor while tracing (ONNX)
            top_idx.append(level.topk(k, dim=1).indices + offset)
            offset += n
        top_idx = torch.cat(top_idx, dim=1)  # (N, k_total)
        batch = torch.arange(num_images, device=device)[:, None]
        scores = torch.sigmoid(objectness[batch, top_idx])
        boxes = proposals[batch, top_idx]
        levels = levels[top_idx]
        all_boxes, all_scores, groups, owners = [], [], [], []
        for i, (b, s, lvl) in enumerate(zip(boxes, scores, levels)):
            b = clip_boxes_to_image(b, image_sizes[i])
            keep = remove_small_boxes(b, self.min_size)
            keep = keep[s[keep] >= self.score_thresh]
            all_boxes.append(b[keep])
            all_scores.append(s[keep])
            # One NMS call for the whole batch: each (image, level) pair is its own group.
            groups.append(lvl[keep] + i * len(counts))
            owners.append(torch.full_like(keep, i))
        all_boxes, all_scores = torch.cat(all_boxes), torch.cat(all_scores)
        owners = torch.cat(owners)
        keep = batched_nms(all_boxes, all_scores, torch.cat(groups), self.nms_thresh)
        post_n = self.post_nms_top_n[self._mode()]
        kept_owner = owners[keep]
        return [all_boxes[keep[kept_owner == i][:post_n]] for i in range(num_images)]

