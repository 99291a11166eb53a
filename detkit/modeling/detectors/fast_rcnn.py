"""Fast R-CNN (Girshick 2015): the two-stage detector on precomputed proposals (selective search or an RPN's).

Calling contract: detkit.modeling.detectors.two_stage; proposals come with the input (targets[i]["proposals"] in
training, ``proposals=`` in eval), x1, y1, x2, y2 in input pixels. Every part left None gets the paper's default:
VGG16 conv5_3, RoIPool 7x7, fc6/fc7, 128 RoIs per 2-image mini-batch (64 per image), 25% foreground at IoU >= 0.5,
background in [0.1, 0.5), shorter side 600 capped at 1000 (§2.3, §3).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from detkit.modeling.detectors.faster_rcnn import IMAGENET_MEAN, IMAGENET_STD, default_box_feature_names
from detkit.modeling.detectors.two_stage import TwoStageDetector
from detkit.modeling.preprocess import ImagePreprocessor
from detkit.modeling.roi_heads.poolers import RoIPooler
from detkit.modeling.roi_heads.predictors import FastRCNNPredictor
from detkit.modeling.roi_heads.roi_heads import RoIHeads


class FastRCNN(TwoStageDetector):
    """Fast R-CNN; any part left None gets the paper's VGG16 default."""

    def __init__(self, backbone: nn.Module | None = None, num_classes: int | None = 21, *,
                 roi_heads: nn.Module | None = None, preprocessor: nn.Module | None = None,
                 box_feature_names: Sequence[str] | None = None, channels_last: bool = False) -> None:
        if backbone is None:
            from detkit.modeling.backbones import build_backbone
            backbone = build_backbone("vgg16", fpn=False)
        box_feature_names = list(box_feature_names or default_box_feature_names(backbone))
        if roi_heads is None:
            if num_classes is None:
                raise ValueError("num_classes (foreground classes + 1 for background) is needed to build RoI heads")
            from detkit.modeling.backbones import build_vgg_fc_head
            pooler = RoIPooler(7, [backbone.strides[n] for n in box_feature_names], pooler_type="roi_pool")
            box_head = build_vgg_fc_head()
            roi_heads = RoIHeads(pooler, box_head, FastRCNNPredictor(box_head.out_channels, num_classes),
                                 bg_iou_lo=0.1, batch_size_per_image=64, positive_fraction=0.25)
        if preprocessor is None:
            preprocessor = ImagePreprocessor(600, 1000, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
        super().__init__(backbone, None, roi_heads, preprocessor, box_feature_names=box_feature_names,
                         channels_last=channels_last)
