"""Matching predictions to ground truth, and sampling a balanced minibatch of matches.

M ground-truth boxes, P predictions (anchors or proposals). A match quality matrix is (M, P), e.g. IoU.
Matcher output per prediction: the index of its ground-truth box, or BELOW_LOW_THRESHOLD (background)
or BETWEEN_THRESHOLDS (ignored).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

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
            generator = _next_image_generator()
            pos_idx = positive[_randperm(positive.numel(), positive.device, generator)[:num_pos]]
            neg_idx = negative[_randperm(negative.numel(), negative.device, generator)[:num_neg]]
            pos_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            pos_mask[pos_idx] = True
            neg_mask[neg_idx] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks


# Per-image sampling seeds of the batch being trained (see per_image_sampling): [seeds, number of images sampled].
_IMAGE_SEEDS: list[Any] | None = None


@contextlib.contextmanager
def per_image_sampling(seeds: Sequence[int]) -> Iterator[None]:
    """Within the block, BalancedSampler draws image i's k-th sample from a generator seeded by (seeds[i], k).

    The samplers meet the batch's images in order, once per stage (RPN, then RoI heads), so the j-th per-image
    call is image j % N of stage j // N. Each image's draws then depend on its own seed only, not on its place in
    the batch nor on the process it lands on: data-parallel training with B/W images per rank samples exactly what
    one process with B images samples (and the global RNG stream is untouched).
    """
    global _IMAGE_SEEDS
    previous, _IMAGE_SEEDS = _IMAGE_SEEDS, [list(seeds), 0]
    try:
        yield
    finally:
        _IMAGE_SEEDS = previous


def _next_image_generator() -> torch.Generator | None:
    """The generator for the next per-image draw inside per_image_sampling (None outside it)."""
    if _IMAGE_SEEDS is None or not _IMAGE_SEEDS[0]:
        return None
    seeds, calls = _IMAGE_SEEDS
    _IMAGE_SEEDS[1] += 1
    stage, image = divmod(calls, len(seeds))
    return torch.Generator().manual_seed(int(seeds[image]) * 1000 + stage)


def _randperm(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """torch.randperm from the global stream, or from `generator` on the CPU (then moved to `device`)."""
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator).to(device)
