"""Faster R-CNN (Ren et al. 2015): the two-stage detector with a Region Proposal Network over anchors.

Calling contract: detkit.modeling.detectors.two_stage (torchvision's). Every part left None gets the default of
torchvision's fasterrcnn_resnet50_fpn (R50-FPN, anchors 32-512 at three aspect ratios, RoIAlign 7x7, 2-MLP head).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from detkit.modeling.detectors.two_stage import TwoStageDetector
from detkit.modeling.preprocess import ImagePreprocessor
from detkit.modeling.proposals.anchors import AnchorGenerator
from detkit.modeling.proposals.rpn import RegionProposalNetwork, RPNHead
from detkit.modeling.roi_heads.box_head import TwoMLPHead
from detkit.modeling.roi_heads.poolers import RoIPooler
from detkit.modeling.roi_heads.predictors import FastRCNNPredictor
from detkit.modeling.roi_heads.roi_heads import RoIHeads

FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
# torchvision's ImageNet normalisation and its 800 / 1333 resize
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_box_feature_names(backbone: nn.Module) -> list[str]:
    """The feature maps the RoI heads pool from: all but FPN's 'pool' (P6 only feeds the RPN)."""
    return [n for n in backbone.strides if n != "pool"]


class FasterRCNN(TwoStageDetector):
    """Faster R-CNN; any part left None gets the R50-FPN default of torchvision's fasterrcnn_resnet50_fpn."""

    def __init__(self, backbone: nn.Module | None = None, num_classes: int | None = 91, *,
                 rpn: nn.Module | None = None, roi_heads: nn.Module | None = None,
                 preprocessor: nn.Module | None = None, box_feature_names: Sequence[str] | None = None,
                 channels_last: bool = False) -> None:
        if backbone is None:
            from detkit.modeling.backbones import build_backbone
            backbone = build_backbone("resnet50", fpn=True)
        strides = dict(backbone.strides)
        box_feature_names = list(box_feature_names or default_box_feature_names(backbone))
        if rpn is None:
            sizes = FPN_ANCHOR_SIZES if len(strides) == 5 else ((128, 256, 512),)
            anchor_generator = AnchorGenerator(sizes, (0.5, 1.0, 2.0))
            rpn = RegionProposalNetwork(anchor_generator,
                                        RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0]))
        if roi_heads is None:
            if num_classes is None:
                raise ValueError("num_classes (foreground classes + 1 for background) is needed to build RoI heads")
            pooler = RoIPooler(7, [strides[n] for n in box_feature_names], sampling_ratio=2, aligned=False)
            box_head = TwoMLPHead(backbone.out_channels * 7 * 7, 1024)
            roi_heads = RoIHeads(pooler, box_head, FastRCNNPredictor(1024, num_classes))
        if preprocessor is None:
            preprocessor = ImagePreprocessor(800, 1333, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
        super().__init__(backbone, rpn, roi_heads, preprocessor, box_feature_names=box_feature_names,
                         channels_last=channels_last)
