"""The one two-stage forward every detector shares: preprocess -> backbone -> proposals -> RoI heads -> postprocess.

Calling contract (torchvision's): model(images, targets=None, proposals=None) with images a list of N (3, H, W)
float tensors in [0, 1]. In training, targets is a list of N dicts with boxes (M, 4) float x1, y1, x2, y2 in
input pixels and labels (M,) int64 in 1..K (0 is background); a detector without a proposal generator also needs
proposals (P, 4) float x1, y1, x2, y2 in input pixels in each target, and in eval the ``proposals=`` list of
(P_i, 4). Training returns a dict of losses; eval returns per image a dict of boxes (D, 4) in input pixels,
labels (D,) and scores (D,).

Inputs are checked here, before any layer runs (detkit.modeling.detectors.input_checks): non-float or non-finite
images, every target field (shape, dtype, one label per box, labels in 1..K, finite values, boxes with area inside
the image) and proposals (shape, dtype, finite) are DetkitErrors naming the image index and the field; target
boxes are clipped to their image. Images may require grad (the gradient reaches them, as in torchvision).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detkit.errors import DetkitError
from detkit.modeling.detectors.input_checks import check_finite_images, check_proposals, check_targets
from detkit.modeling.preprocess import check_images, to_input_pixels

FREEZABLE = ("backbone", "rpn", "roi_heads")


class TwoStageDetector(nn.Module):
    """Backbone, optional proposal generator (``rpn``), RoI heads and pre/post-processing, wired in one forward.

    With ``rpn=None`` proposals come with the input (Fast R-CNN, R-CNN), or at test time, when none are given,
    from ``test_proposal_generator`` (images in, per-image (P, 4) boxes in input pixels out: e.g.
    detkit.modeling.proposals.search_generator.SelectiveSearchProposals), so the detector is callable on an image
    alone; given proposals win over it; ``rpn`` keeps that name because
    checkpoints and the torchvision interop address its weights as ``rpn.*``. ``freeze`` fixes parts for the steps of
    alternating training (detkit.recipes.alternating): a frozen RPN still proposes, frozen RoI heads are skipped in
    training, so a detector with frozen RoI heads is an RPN-only network whose losses are the RPN's.
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module | None, roi_heads: nn.Module, preprocessor: nn.Module,
                 *, box_feature_names: Sequence[str], channels_last: bool = False,
                 test_proposal_generator: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.preprocessor = preprocessor
        self.box_feature_names = list(box_feature_names)
        self.channels_last = channels_last
        self.test_proposal_generator = test_proposal_generator
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
    def num_classes(self) -> int | None:
        """K, the foreground classes the predictor scores (its outputs less background), or None if it cannot tell."""
        scorer = getattr(getattr(self.roi_heads, "box_predictor", None), "cls_score", None)
        return scorer.out_features - 1 if isinstance(scorer, nn.Linear) else None

    @property
    def needs_proposals(self) -> bool:
        """True when proposals must come with the input (no proposal generator)."""
        return self.rpn is None

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                proposals: list[Tensor] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training, detections in eval (see the module docstring)."""
        return self._run(images, targets, proposals)[0]

    def detect_with_proposals(self, images: list[Tensor], proposals: list[Tensor] | None = None
                              ) -> tuple[list[dict[str, Tensor]], list[Tensor] | None]:
        """Eval: the detections of ``forward`` and, for a detector with an RPN, its proposals of the same pass (one
        (P_i, 4) float32 tensor per image, x1, y1, x2, y2 in input pixels, best objectness first, at most the RPN's
        post_nms_top_n["testing"]); None without an RPN. For RPN recall next to mAP (the backbone runs once)."""
        if self.training:
            raise DetkitError("detect_with_proposals runs in eval mode: call model.eval() first")
        detections, rpn_proposals, batch, original_sizes = self._run(images, None, proposals)
        if rpn_proposals is None:
            return detections, None
        return detections, [to_input_pixels(p.detach().float(), size, original)
                            for p, size, original in zip(rpn_proposals, batch.image_sizes, original_sizes)]

    def propose(self, images: list[Tensor]) -> list[Tensor]:
        """The RPN's proposals for a batch of N (3, H, W) images in [0, 1]: one (P_i, 4) float32 tensor per image,
        x1, y1, x2, y2 in input pixels, best objectness first (P_i <= post_nms_top_n of the RPN's mode: call
        model.eval() for the test-time counts). Raises DetkitError for a detector without an RPN."""
        if self.rpn is None:
            raise DetkitError("this detector has no proposal generator (rpn): it cannot propose")
        check_images(images)
        original_sizes = [tuple(im.shape[-2:]) for im in images]  # ints; traced sizes while exporting to ONNX
        batch, _, _ = self.preprocessor(images)
        x = self._layout(batch.tensors)
        proposals, _ = self.rpn(tuple(x.shape[-2:]), batch.image_sizes, list(self.backbone(x).values()))
        return [to_input_pixels(p.detach().float(), size, original)
                for p, size, original in zip(proposals, batch.image_sizes, original_sizes)]

    def region_features(self, images: list[Tensor], boxes: list[Tensor]) -> Any:
        """The box head's output for given regions: boxes[i] (R_i, 4) float x1, y1, x2, y2 in the input pixels of
        images[i]; rows in image order (R = sum R_i). What the box head returns: (R, D) features, or for R-CNN's
        region CNN the pair fc7 (R, D), pool5 (R, D5) (the features its SVMs and box regressors are fitted on)."""
        check_images(images)
        batch, _, scaled = self.preprocessor(images, None, boxes)
        features = self.backbone(self._layout(batch.tensors))
        return self.roi_heads.region_features([features[n] for n in self.box_feature_names], scaled)

    def sampled_region_logits(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Class logits (R, K + 1) of the regions the RoI heads sample from targets[i]["proposals"] (as in training,
        with the global torch random stream) and their labels (R,) (0 background): a classifier's accuracy on them."""
        check_images(images)
        batch, scaled_targets, _ = self.preprocessor(images, targets, None)
        features = self.backbone(self._layout(batch.tensors))
        boxes, labels, _ = self.roi_heads.sample_proposals([t["proposals"] for t in scaled_targets], scaled_targets)
        box_features = self.roi_heads.box_head(self.roi_heads.pooler(
            [features[n] for n in self.box_feature_names], boxes))
        return self.roi_heads.box_predictor.class_logits(box_features), labels

    def _layout(self, x: Tensor) -> Tensor:
        """The batch tensor in the backbone's memory format (channels_last when asked)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _run(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None, proposals: list[Tensor] | None
             ) -> tuple[Any, list[Tensor] | None, Any, list[tuple[int, int]]]:
        """The one forward: (losses or detections, the RPN's proposals in batch pixels or None, batch, input sizes)."""
        check_images(images)
        check_finite_images(images)
        if self.training:
            targets = check_targets(images, targets, self.num_classes)
        proposals = self._input_proposals(images, targets, proposals)
        original_sizes = [tuple(im.shape[-2:]) for im in images]  # ints; traced sizes while exporting to ONNX
        batch, targets, proposals = self.preprocessor(images, targets, proposals)
        x = self._layout(batch.tensors)
        features = self.backbone(x)
        losses: dict[str, Tensor] = {}
        rpn_proposals = None
        if self.rpn is not None:
            proposals, losses = self.rpn(tuple(x.shape[-2:]), batch.image_sizes, list(features.values()), targets)
            rpn_proposals = proposals
        elif self.training:
            proposals = [t["proposals"] for t in targets]
        if self.training and "roi_heads" in self.frozen:  # an RPN-only network: its losses are the RPN's
            return losses, rpn_proposals, batch, original_sizes
        box_features = [features[name] for name in self.box_feature_names]
        detections, head_losses = self.roi_heads(box_features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**losses, **head_losses}, rpn_proposals, batch, original_sizes
        return (self.preprocessor.postprocess(detections, batch.image_sizes, original_sizes), rpn_proposals, batch,
                original_sizes)

    def _input_proposals(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None,
                         proposals: list[Tensor] | None) -> list[Tensor] | None:
        """Eval-time proposals after checking that they come exactly when the detector needs them."""
        num_images = len(images)
        if self.rpn is not None:
            if proposals is not None or (targets and any("proposals" in t for t in targets)):
                raise DetkitError("this detector has its own proposal generator (rpn): do not pass proposals")
            return None
        if self.training:  # check_targets checked each target's proposals
            if any("proposals" not in t for t in targets):
                raise DetkitError(f"this detector has no proposal generator: pass (P, 4) proposals for each of the "
                                  f"{num_images} images in targets[i]['proposals']")
            return None
        if proposals is None and self.test_proposal_generator is not None:
            proposals = self.test_proposal_generator(images)
        return check_proposals(proposals, num_images, "the proposals= argument")
