"""torchvision interop: the same Faster R-CNN R50-FPN both ways, weights and post-processing settings included.

torchvision's fasterrcnn_resnet50_fpn and detkit's R50-FPN detector share their layer names except the RPN's
3x3 conv, which torchvision wraps in Conv2dNormActivation (`rpn.head.conv.0.0.*`, `rpn.head.conv.*` before 0.15).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from detkit.config import config_from_dict
from detkit.modeling.build import build_model
from detkit.modeling.detectors.faster_rcnn import FasterRCNN

_TV_RPN_CONV = "rpn.head.conv.0.0."
_DK_RPN_CONV = "rpn.head.conv."


def _state_dict_from_torchvision(state_dict: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
    return OrderedDict((_DK_RPN_CONV + k[len(_TV_RPN_CONV):] if k.startswith(_TV_RPN_CONV) else k, v)
                       for k, v in state_dict.items())


def _state_dict_to_torchvision(state_dict: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
    return OrderedDict((_TV_RPN_CONV + k[len(_DK_RPN_CONV):] if k.startswith(_DK_RPN_CONV) else k, v)
                       for k, v in state_dict.items())


def _settings_from_torchvision(model: nn.Module) -> dict:
    """detkit config keys equal to a torchvision FasterRCNN's pre- and post-processing settings."""
    t, rpn, heads = model.transform, model.rpn, model.roi_heads
    return {
        "input": {"min_size": list(t.min_size), "max_size": t.max_size, "test_min_size": t.min_size[-1],
                  "pixel_mean": list(t.image_mean), "pixel_std": list(t.image_std)},
        "model": {"rpn": {"anchor_sizes": [list(map(float, s)) for s in rpn.anchor_generator.sizes],
                          "aspect_ratios": list(map(float, rpn.anchor_generator.aspect_ratios[0])),
                          "pre_nms_top_n_train": rpn._pre_nms_top_n["training"],
                          "pre_nms_top_n_test": rpn._pre_nms_top_n["testing"],
                          "post_nms_top_n_train": rpn._post_nms_top_n["training"],
                          "post_nms_top_n_test": rpn._post_nms_top_n["testing"],
                          "nms_thresh": rpn.nms_thresh, "min_size": rpn.min_size},
                  "roi_heads": {"score_thresh": heads.score_thresh, "nms_thresh": heads.nms_thresh,
                                "detections_per_img": heads.detections_per_img}},
    }


def from_torchvision(model_or_state_dict: nn.Module | dict[str, Tensor]) -> FasterRCNN:
    """The detkit R50-FPN detector equal to a torchvision fasterrcnn_resnet50_fpn model or its state_dict."""
    if isinstance(model_or_state_dict, nn.Module):
        settings = _settings_from_torchvision(model_or_state_dict)
        state_dict = model_or_state_dict.state_dict()
    else:
        settings, state_dict = {}, model_or_state_dict
    num_classes = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    frozen = not any(k.endswith("num_batches_tracked") for k in state_dict if k.startswith("backbone.body."))
    tree = {"model": {"backbone": {"name": "resnet50", "fpn": True, "norm": "frozen_bn" if frozen else "bn",
                                   "channels_last": False},
                      "roi_heads": {"aligned": False}}}
    for section, values in settings.items():
        for key, value in values.items():
            tree.setdefault(section, {}).setdefault(key, {})
            if isinstance(value, dict):
                tree[section][key].update(value)
            else:
                tree[section][key] = value
    detector = build_model(config_from_dict(tree), num_classes=num_classes)
    detector.load_state_dict(_state_dict_from_torchvision(state_dict))
    return detector


def to_torchvision(detector: FasterRCNN) -> nn.Module:
    """A torchvision fasterrcnn_resnet50_fpn with the detector's weights and post-processing settings."""
    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    num_classes = detector.roi_heads.box_predictor.cls_score.out_features
    frozen = any(isinstance(m, FrozenBatchNorm2d) for m in detector.backbone.modules())
    pre, heads, rpn = detector.preprocessor, detector.roi_heads, detector.rpn
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5,
                                   norm_layer=FrozenBatchNorm2d if frozen else nn.BatchNorm2d)
    model = TorchvisionFasterRCNN(
        backbone, num_classes=num_classes,
        min_size=pre.test_min_size, max_size=pre.max_size, image_mean=pre.pixel_mean.flatten().tolist(),
        image_std=pre.pixel_std.flatten().tolist(),
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n["testing"], rpn_post_nms_top_n_test=rpn.post_nms_top_n["testing"],
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n["training"],
        rpn_post_nms_top_n_train=rpn.post_nms_top_n["training"], rpn_nms_thresh=rpn.nms_thresh,
        box_score_thresh=heads.score_thresh, box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_img)
    with torch.no_grad():
        model.load_state_dict(_state_dict_to_torchvision(detector.state_dict()))
    return model
