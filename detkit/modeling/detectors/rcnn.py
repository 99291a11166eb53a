"""R-CNN (Girshick et al. 2014, "Rich feature hierarchies"): a CNN run on every warped selective-search region.

Calling contract: detkit.modeling.detectors.two_stage; proposals come with the input (targets[i]["proposals"] in
training, ``proposals=`` in eval), x1, y1, x2, y2 in input pixels. The parts of the two-stage forward: the
"backbone" hands the normalised image itself to the RoI heads, the pooler crops and warps each region (16 pixels
of context at 227 x 227, appendix A), the box head is the whole CNN, and the predictor is a softmax while
fine-tuning and per-class linear SVMs plus ridge box regressors at test time (their weights are state_dict
buffers). Test: SVM margins, box regression, per-class NMS at IoU 0.3 (§2.2). Fine-tuning: 32 foreground
(IoU >= 0.5) and 96 background windows per mini-batch of 128 (§2.3). Every part left None gets the paper's VGG16
default.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from detkit.modeling.detectors.faster_rcnn import IMAGENET_MEAN, IMAGENET_STD
from detkit.modeling.detectors.two_stage import TwoStageDetector
from detkit.modeling.preprocess import ImagePreprocessor
from detkit.modeling.roi_heads.roi_heads import RoIHeads
from detkit.modeling.roi_heads.svm import SVMPredictor
from detkit.modeling.roi_heads.warp import RegionWarper

IMAGE_FEATURE = "image"


class ImageAsFeature(nn.Module):
    """R-CNN's "backbone": the normalised batch image (N, 3, H, W) is the only feature map, stride 1."""

    out_channels = 3
    strides = {IMAGE_FEATURE: 1}

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        """{"image": x} for the batch x (N, 3, H, W)."""
        return OrderedDict([(IMAGE_FEATURE, x)])


def build_rcnn_heads(region_cnn: nn.Module, num_classes: int, *, warp_size: int = 227, context_pad: int = 16,
                     batch_size_per_image: int = 64, positive_fraction: float = 0.25, score_thresh: float = -1.0,
                     nms_thresh: float = 0.3, detections_per_img: int = 100) -> RoIHeads:
    """R-CNN's RoI heads: the ordinary RoIHeads with the region warper as pooler, the region CNN as box head and
    the SVM predictor, 256 warped regions at a time at test time; num_classes counts background."""
    predictor = SVMPredictor(region_cnn.out_channels, region_cnn.pool5_channels, num_classes)
    return RoIHeads(RegionWarper(warp_size, context_pad), region_cnn, predictor, fg_iou_thresh=0.5,
                    bg_iou_thresh=0.5, batch_size_per_image=batch_size_per_image,
                    positive_fraction=positive_fraction, score_thresh=score_thresh, nms_thresh=nms_thresh,
                    detections_per_img=detections_per_img, chunk_size=256)


class RCNN(TwoStageDetector):
    """R-CNN; any part left None gets the paper's default (VGG16 fc7 at 227 x 227, 2 images x 64 windows)."""

    def __init__(self, num_classes: int | None = 21, *, roi_heads: nn.Module | None = None,
                 preprocessor: nn.Module | None = None) -> None:
        if roi_heads is None:
            if num_classes is None:
                raise ValueError("num_classes (foreground classes + 1 for background) is needed to build RoI heads")
            from detkit.modeling.backbones import build_backbone, build_vgg_fc_head
            from detkit.modeling.roi_heads.region_cnn import VGGRegionCNN
            roi_heads = build_rcnn_heads(VGGRegionCNN(build_backbone("vgg16"), build_vgg_fc_head(), 227), num_classes)
        if preprocessor is None:  # shorter side 600 capped at 1000, as Fast R-CNN; every region is then warped to S x S
            preprocessor = ImagePreprocessor(600, 1000, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
        super().__init__(ImageAsFeature(), None, roi_heads, preprocessor, box_feature_names=[IMAGE_FEATURE])
