"""Matching predictions to ground truth, and sampling a balanced minibatch of matches.

M ground-truth boxes, P predictions (anchors or proposals). A match quality matrix is (M, P), e.g. IoU.
Matcher output per prediction: the index of its ground-truth box, or BELOW_LOW_THRESHOLD (background)
or BETWEEN_THRESHOLDS (ignored).
"""
from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


class Matcher:
    """Assigns each prediction to the ground-truth box it overlaps most, with an ignore band."""

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False) -> None:
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} must not exceed high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality: Tensor) -> Tensor:
        """Matches (P,) int64 for a quality matrix (M, P); with M == 0 every prediction is background."""
        if quality.numel() == 0:
            return torch.full((quality.shape[1],), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device)
        best_quality, matches = quality.max(dim=0)
        original = matches.clone() if self.allow_low_quality_matches else None
        matches[best_quality < self.low_threshold] = BELOW_LOW_THRESHOLD
        matches[(best_quality >= self.low_threshold) & (best_quality < self.high_threshold)] = BETWEEN_THRESHOLDS
        if original is not None:
            # Faster R-CNN §3.1.2: every ground-truth box keeps the prediction(s) that overlap it most,
            # even below the high threshold, so that no object goes without a positive. A box that overlaps
            # nothing (best IoU 0) keeps nothing: otherwise every prediction would tie at 0 and match it.
            best_per_gt = quality.max(dim=1, keepdim=True).values
            _, pred_idx = torch.nonzero((quality == best_per_gt) & (best_per_gt > 0), as_tuple=True)
            matches[pred_idx] = original[pred_idx]
        return matches


class BalancedSampler:
    """Samples up to batch_size_per_image predictions per image, at most positive_fraction of them positive."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Positive and negative masks per image, for labels where >= 1 is positive, 0 negative, -1 ignored."""
        pos_masks, neg_masks = [], []
        for labels_per_image in labels:
            positive = torch.nonzero(labels_per_image >= 1).flatten()
            negative = torch.nonzero(labels_per_image == 0).flatten()
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos_idx = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg_idx = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
            pos_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            pos_mask[pos_idx] = True
            neg_mask[neg_idx] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
