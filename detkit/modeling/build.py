"""Config -> detector: the one place where config keys become constructor arguments."""
from __future__ import annotations

from torch import nn

from detkit.config_schema import Config
from detkit.errors import DetkitError
from detkit.modeling.backbones import build_backbone, build_res5_head, build_vgg_fc_head
from detkit.modeling.detectors.faster_rcnn import FasterRCNN
from detkit.modeling.preprocess import ImagePreprocessor
from detkit.modeling.proposals.anchors import AnchorGenerator
from detkit.modeling.proposals.rpn import RegionProposalNetwork, RPNHead
from detkit.modeling.roi_heads.box_head import TwoMLPHead
from detkit.modeling.roi_heads.fast_rcnn import RoIHeads
from detkit.modeling.roi_heads.poolers import RoIPooler
from detkit.modeling.roi_heads.predictors import FastRCNNPredictor


def _box_head(cfg: Config, in_channels: int) -> nn.Module:
    bb = cfg.model.backbone
    if bb.fpn:
        res = cfg.model.roi_heads.pooler_resolution
        return TwoMLPHead(in_channels * res * res, cfg.model.roi_heads.representation_size)
    if bb.name.startswith("vgg"):
        return build_vgg_fc_head(weights=bb.weights)
    return build_res5_head(bb.name, norm=bb.norm, weights=bb.weights)


def build_rpn(cfg: Config, in_channels: int, num_levels: int) -> RegionProposalNetwork:
    """The RPN of cfg.model.rpn for a backbone with num_levels feature maps."""
    r = cfg.model.rpn
    if len(r.anchor_sizes) != num_levels:
        raise DetkitError(f"config key 'model.rpn.anchor_sizes' has {len(r.anchor_sizes)} levels but the backbone "
                          f"{cfg.model.backbone.name} (fpn={cfg.model.backbone.fpn}) gives {num_levels} feature maps")
    anchor_generator = AnchorGenerator(r.anchor_sizes, r.aspect_ratios)
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchor_generator, head, fg_iou_thresh=r.fg_iou_thresh, bg_iou_thresh=r.bg_iou_thresh,
        batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
        pre_nms_top_n={"training": r.pre_nms_top_n_train, "testing": r.pre_nms_top_n_test},
        post_nms_top_n={"training": r.post_nms_top_n_train, "testing": r.post_nms_top_n_test},
        nms_thresh=r.nms_thresh, min_size=r.min_size)


def build_model(cfg: Config, num_classes: int | None = None) -> FasterRCNN:
    """The detector a config describes; num_classes counts foreground classes (cfg.model.num_classes wins)."""
    num_classes = cfg.model.num_classes or num_classes
    if num_classes is None:
        raise DetkitError("the number of classes is unknown: set model.num_classes or build from a dataset")
    bb = cfg.model.backbone
    backbone = build_backbone(bb.name, fpn=bb.fpn, norm=bb.norm, weights=bb.weights,
                              trainable_layers=bb.trainable_layers)
    names = [n for n in backbone.strides if n != "pool"]
    rh = cfg.model.roi_heads
    pooler = RoIPooler(rh.pooler_resolution, [backbone.strides[n] for n in names], sampling_ratio=rh.sampling_ratio,
                       pooler_type=rh.pooler, aligned=rh.aligned)
    box_head = _box_head(cfg, backbone.out_channels)
    roi_heads = RoIHeads(pooler, box_head, FastRCNNPredictor(box_head.out_channels, num_classes + 1),
                         fg_iou_thresh=rh.fg_iou_thresh, bg_iou_thresh=rh.bg_iou_thresh,
                         batch_size_per_image=rh.batch_size_per_image, positive_fraction=rh.positive_fraction,
                         score_thresh=rh.score_thresh, nms_thresh=rh.nms_thresh,
                         detections_per_img=rh.detections_per_img)
    preprocessor = ImagePreprocessor(cfg.input.min_size, cfg.input.max_size, pixel_mean=cfg.input.pixel_mean,
                                     pixel_std=cfg.input.pixel_std, test_min_size=cfg.input.test_min_size)
    return FasterRCNN(backbone, num_classes + 1, rpn=build_rpn(cfg, backbone.out_channels, len(backbone.strides)),
                      roi_heads=roi_heads, preprocessor=preprocessor, box_feature_names=names,
                      channels_last=bb.channels_last)
