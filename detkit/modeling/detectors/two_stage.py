"""The one two-stage forward every detector shares: preprocess -> backbone -> proposals -> RoI heads -> postprocess.

Calling contract (torchvision's): model(images, targets=None, proposals=None) with images a list of N (3, H, W)
float tensors in [0, 1]. In training, targets is a list of N dicts with boxes (M, 4) float x1, y1, x2, y2 in
input pixels and labels (M,) int64 in 1..K (0 is background); a detector without a proposal generator also needs
proposals (P, 4) float x1, y1, x2, y2 in input pixels in each target, and in eval the ``proposals=`` list of
(P_i, 4). Training returns a dict of losses; eval returns per image a dict of boxes (D, 4) in input pixels,
labels (D,) and scores (D,).

Inputs are checked here, before any layer runs: non-float images, a target box with no area inside its image and
missing proposals are DetkitErrors naming the image (and box); target boxes are clipped to their image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit.box_ops import clip_boxes_to_image
from detkit.errors import DetkitError
from detkit.modeling.preprocess import check_images

FREEZABLE = ("backbone", "rpn", "roi_heads")


def check_targets(images: Sequence[Tensor], targets: list[dict[str, Tensor]] | None) -> list[dict[str, Tensor]]:
    """Targets with boxes clipped to their image; DetkitError naming the image and box when one is malformed."""
    if targets is None or len(targets) != len(images):
        raise DetkitError(f"training needs one target per image: got {len(images)} images and "
                          f"{0 if targets is None else len(targets)} targets")
    checked = []
    for i, (image, target) in enumerate(zip(images, targets)):
        boxes = target["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise DetkitError(f"target {i}: boxes must have shape (M, 4), got {tuple(boxes.shape)}")
        if not boxes.is_floating_point():
            raise DetkitError(f"target {i}: boxes have dtype {boxes.dtype}; they must be float pixels")
        height, width = int(image.shape[-2]), int(image.shape[-1])
        clipped = clip_boxes_to_image(boxes, (height, width))
        bad = torch.nonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])).flatten()
        if bad.numel():
            j = bad[0].item()
            raise DetkitError(f"target {i}: box {j} {boxes[j].tolist()} has no area inside the image "
                              f"({width}x{height}, W x H)")
        checked.append({**target, "boxes": clipped})
    return checked


class TwoStageDetector(nn.Module):
    """Backbone, optional proposal generator (``rpn``), RoI heads and pre/post-processing, wired in one forward.

    With ``rpn=None`` proposals come with the input (Fast R-CNN, R-CNN); ``rpn`` keeps that name because
    checkpoints and the torchvision interop address its weights as ``rpn.*``. ``freeze`` fixes parts for the steps of
    alternating training (detkit.engine.schedules): a frozen RPN still proposes, frozen RoI heads are skipped in
    training, so a detector with frozen RoI heads is an RPN-only network whose losses are the RPN's.
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module | None, roi_heads: nn.Module, preprocessor: nn.Module,
                 *, box_feature_names: Sequence[str], channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.preprocessor = preprocessor
        self.box_feature_names = list(box_feature_names)
        self.channels_last = channels_last
        self.frozen: tuple[str, ...] = ()

    def freeze(self, *parts: str) -> TwoStageDetector:
        """Fixes the named parts ('backbone', 'rpn', 'roi_heads'): no gradient, and eval mode (batch-norm statistics
        and the RPN's test-time proposal counts) even under .train(); freeze() with no name unfreezes all. Returns self."""
        unknown = [p for p in parts if p not in FREEZABLE or getattr(self, p) is None]
        if unknown:
            raise ValueError(f"cannot freeze {unknown}: this detector's parts are "
                             f"{[p for p in FREEZABLE if getattr(self, p) is not None]}")
        self.frozen = tuple(parts)
        for name in FREEZABLE:
            part = getattr(self, name)
            if part is not None:
                part.requires_grad_(name not in parts)
        return self.train(self.training)

    def train(self, mode: bool = True) -> TwoStageDetector:
        """nn.Module.train, except that frozen parts stay in eval mode (as mmdetection's frozen stages do)."""
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    @property
    def needs_proposals(self) -> bool:
        """True when proposals must come with the input (no proposal generator)."""
        return self.rpn is None

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                proposals: list[Tensor] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training, detections in eval (see the module docstring)."""
        check_images(images)
        if self.training:
            targets = check_targets(images, targets)
        proposals = self._input_proposals(len(images), targets, proposals)
        original_sizes = [tuple(im.shape[-2:]) for im in images]  # ints; traced sizes while exporting to ONNX
        batch, targets, proposals = self.preprocessor(images, targets, proposals)
        x = batch.tensors.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.tensors
        features = self.backbone(x)
        losses: dict[str, Tensor] = {}
        if self.rpn is not None:
            proposals, losses = self.rpn(tuple(x.shape[-2:]), batch.image_sizes, list(features.values()), targets)
        elif self.training:
            proposals = [t["proposals"] for t in targets]
        if self.training and "roi_heads" in self.frozen:  # an RPN-only network: its losses are the RPN's
            return losses
        box_features = [features[name] for name in self.box_feature_names]
        detections, head_losses = self.roi_heads(box_features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**losses, **head_losses}
        return self.preprocessor.postprocess(detections, batch.image_sizes, original_sizes)

    def _input_proposals(self, num_images: int, targets: list[dict[str, Tensor]] | None,
                         proposals: list[Tensor] | None) -> list[Tensor] | None:
        """Eval-time proposals after checking that they come exactly when the detector needs them."""
        if self.rpn is not None:
            if proposals is not None or (targets and any("proposals" in t for t in targets)):
                raise DetkitError("this detector has its own proposal generator (rpn): do not pass proposals")
            return None
        given = [t.get("proposals") for t in targets] if self.training else proposals
        where = "targets[i]['proposals']" if self.training else "the proposals= argument"
        if given is None or len(given) != num_images or any(p is None for p in given):
            raise DetkitError(f"this detector has no proposal generator: pass (P, 4) proposals for each of the "
                              f"{num_images} images in {where}")
        for i, p in enumerate(given):
            if p.dim() != 2 or p.shape[-1] != 4 or not p.is_floating_point():
                raise DetkitError(f"image {i}: proposals must be a float (P, 4) tensor, got {p.dtype} "
                                  f"{tuple(p.shape)}")
        return None if self.training else list(given)
