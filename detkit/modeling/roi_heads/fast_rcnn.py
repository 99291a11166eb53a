"""Fast R-CNN's multi-task loss and inference (Girshick 2015, §2.3 and §3): shared by every two-stage detector.

R sampled regions over N images, K + 1 classes with 0 = background. Boxes are x1, y1, x2, y2 in pixels of the
resized batch image; box deltas are class-specific, (R, 4 (K + 1)), encoded by detkit.box_ops.BoxCoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit.box_ops import BoxCoder, clip_boxes_to_image, remove_small_boxes
from detkit.ranks import global_mean_count
from detkit.ops import batched_nms


def fast_rcnn_losses(class_logits: Tensor, box_deltas: Tensor, labels: Tensor,
                     regression_targets: Tensor) -> dict[str, Tensor]:
    """Cross-entropy over all sampled regions; smooth-L1 on the true class's deltas of foreground regions.

    Both are sums over this process's R regions divided by global_mean_count(R) (detkit.ranks): R
    itself alone, and under data-parallel training the mean over ranks of R, so that DDP's gradient average is the
    per-region mean of the whole global batch however its regions fall on the ranks (the docstring there derives
    it). Alone this is bit-identical to cross_entropy's mean. Every rank must call it (it all-reduces R).
    """
    normalizer = global_mean_count(labels.new_tensor(labels.numel()))  # a collective: before any early return
    if labels.numel() == 0:  # no region sampled on this rank: zero losses that still reach every weight
        zero = class_logits.sum() * 0 + box_deltas.sum() * 0
        return {"loss_classifier": zero, "loss_box_reg": zero.clone()}
    cls_loss = F.cross_entropy(class_logits, labels, reduction="sum") / normalizer
    fg = torch.nonzero(labels > 0).squeeze(1)
    deltas = box_deltas.view(box_deltas.shape[0], -1, 4)[fg, labels[fg]]
    # Normalised by all sampled regions (not only foreground), as in the Fast R-CNN reference code.
    box_loss = F.smooth_l1_loss(deltas, regression_targets[fg], beta=1 / 9, reduction="sum") / normalizer
    return {"loss_classifier": cls_loss, "loss_box_reg": box_loss}


def fast_rcnn_inference(class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                        image_sizes: list[tuple[int, int]], box_coder: BoxCoder, *, score_thresh: float,
                        nms_thresh: float, detections_per_img: int, min_box_size: float) -> list[dict[str, Tensor]]:
    """Decode, clip, drop background and low scores, per-class NMS, keep the top detections of each image."""
    num_classes = class_logits.shape[1]
    counts = [p.shape[0] for p in proposals]
    boxes_all = box_coder.decode(box_deltas, torch.cat(proposals)).view(-1, num_classes, 4)
    scores_all = F.softmax(class_logits, dim=-1)
    device = class_logits.device
    cand_boxes, cand_scores, cand_labels, cand_image = [], [], [], []
    for i, (boxes, scores) in enumerate(zip(boxes_all.split(counts), scores_all.split(counts))):
        boxes = clip_boxes_to_image(boxes, image_sizes[i])[:, 1:].reshape(-1, 4)
        labels = torch.arange(1, num_classes, device=device).expand(scores.shape[0], -1).reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.nonzero(scores > score_thresh).squeeze(1)
        keep = keep[remove_small_boxes(boxes[keep], min_box_size)]
        cand_boxes.append(boxes[keep])
        cand_scores.append(scores[keep])
        cand_labels.append(labels[keep])
        cand_image.append(torch.full_like(keep, i))
    boxes, scores = torch.cat(cand_boxes), torch.cat(cand_scores)
    labels, image = torch.cat(cand_labels), torch.cat(cand_image)
    # One NMS call for the whole batch: each (image, class) pair is its own group.
    keep = batched_nms(boxes, scores, labels + image * num_classes, nms_thresh)
    kept_image = image[keep]
    detections = []
    for i in range(len(proposals)):
        idx = keep[kept_image == i][:detections_per_img]
        detections.append({"boxes": boxes[idx], "labels": labels[idx], "scores": scores[idx]})
    return detections
