"""Faster R-CNN (Ren et al. 2015): backbone -> RPN proposals -> RoI heads, trained end to end.

Calling contract (torchvision's): model(images, targets=None) with images a list of (3, H, W) float tensors in
[0, 1] and, in training, targets a list of dicts with boxes (M, 4) float x1, y1, x2, y2 in input pixels and labels
(M,) int64 in 1..K (0 is background). Training returns a dict of losses; eval returns per image a dict of boxes
(D, 4) in input pixels, labels (D,) and scores (D,).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit.modeling.preprocess import ImagePreprocessor
from detkit.modeling.proposals.anchors import AnchorGenerator
from detkit.modeling.proposals.rpn import RegionProposalNetwork, RPNHead
from detkit.modeling.roi_heads.box_head import TwoMLPHead
from detkit.modeling.roi_heads.fast_rcnn import RoIHeads
from detkit.modeling.roi_heads.poolers import RoIPooler
from detkit.modeling.roi_heads.predictors import FastRCNNPredictor

FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))


def check_targets(targets: list[dict[str, Tensor]] | None, num_images: int) -> None:
    """Raises ValueError naming the image and box when a training target is malformed or degenerate."""
    if targets is None or len(targets) != num_images:
        raise ValueError(f"training needs one target per image: got {num_images} images and "
                         f"{0 if targets is None else len(targets)} targets")
    for i, target in enumerate(targets):
        boxes = target["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {i}: boxes must have shape (M, 4), got {tuple(boxes.shape)}")
        bad = torch.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).flatten()
        if bad.numel():
            raise ValueError(f"target {i}: box {bad[0].item()} {boxes[bad[0]].tolist()} has no positive width "
                             "and height")


class FasterRCNN(nn.Module):
    """Faster R-CNN; any part left None gets the R50-FPN default of torchvision's fasterrcnn_resnet50_fpn."""

    def __init__(self, backbone: nn.Module | None = None, num_classes: int | None = 91, *,
                 rpn: nn.Module | None = None, roi_heads: nn.Module | None = None,
                 preprocessor: nn.Module | None = None, box_feature_names: Sequence[str] | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        if backbone is None:
            from detkit.modeling.backbones import build_backbone
            backbone = build_backbone("resnet50", fpn=True)
        strides = dict(backbone.strides)
        if box_feature_names is None:  # FPN pools from P2-P5; 'pool' (P6) only feeds the RPN
            box_feature_names = [n for n in strides if n != "pool"]
        self.box_feature_names = list(box_feature_names)
        if rpn is None:
            sizes = FPN_ANCHOR_SIZES if len(strides) == 5 else ((128, 256, 512),)
            anchor_generator = AnchorGenerator(sizes, (0.5, 1.0, 2.0))
            rpn = RegionProposalNetwork(anchor_generator,
                                        RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0]))
        if roi_heads is None:
            if num_classes is None:
                raise ValueError("num_classes (foreground classes + 1 for background) is needed to build RoI heads")
            pooler = RoIPooler(7, [strides[n] for n in self.box_feature_names], sampling_ratio=2, aligned=False)
            box_head = TwoMLPHead(backbone.out_channels * 7 * 7, 1024)
            roi_heads = RoIHeads(pooler, box_head, FastRCNNPredictor(1024, num_classes))
        if preprocessor is None:
            preprocessor = ImagePreprocessor(800, 1333, pixel_mean=(0.485, 0.456, 0.406),
                                             pixel_std=(0.229, 0.224, 0.225))
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.preprocessor = preprocessor
        self.channels_last = channels_last

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training, detections in eval (see the module docstring)."""
        if self.training:
            check_targets(targets, len(images))
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, targets = self.preprocessor(images, targets)
        x = batch.tensors.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.tensors
        features = self.backbone(x)
        proposals, rpn_losses = self.rpn(tuple(x.shape[-2:]), batch.image_sizes, list(features.values()), targets)
        box_features = [features[name] for name in self.box_feature_names]
        detections, head_losses = self.roi_heads(box_features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return self.preprocessor.postprocess(detections, batch.image_sizes, original_sizes)
