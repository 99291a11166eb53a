"""torchvision interop: the same ResNet-FPN Faster R-CNN both ways, weights, anchors and settings included.

torchvision's FasterRCNN over `resnet_fpn_backbone` (fasterrcnn_resnet50_fpn for ResNet-50) and detkit's
ResNet-FPN detector share their layer names except the RPN's 3x3 conv, which torchvision wraps in
Conv2dNormActivation (`rpn.head.conv.0.0.*`, `rpn.head.conv.*` before 0.15). ResNet-18/34/50/101 are told apart by
their block type and the number of blocks in layer3. C4 and VGG detectors have no torchvision counterpart.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import Tensor, nn

from detkit.config import config_from_dict
from detkit.errors import DetkitError
from detkit.modeling.build import build_model
from detkit.modeling.detectors.faster_rcnn import FasterRCNN

_TV_RPN_CONV = "rpn.head.conv.0.0."
_DK_RPN_CONV = "rpn.head.conv."
# (bottleneck blocks, blocks in layer3) -> ResNet
_RESNETS = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101"}


def _resnet_name(state_dict: dict[str, Tensor], where: str) -> str:
    """The ResNet under a ResNet-FPN Faster R-CNN state dict, or a one-line error naming what it is not."""
    if "backbone.fpn.inner_blocks.0.0.weight" not in state_dict or "backbone.body.layer3.0.conv1.weight" not in state_dict:
        raise DetkitError(f"{where}: only a ResNet-FPN Faster R-CNN has a torchvision counterpart, and this model has "
                          "no backbone.body.layer* / backbone.fpn weights (a C4 or VGG backbone?).")
    if not any(k.startswith("backbone.body.bn1.running_") for k in state_dict):
        raise DetkitError(f"{where}: torchvision's ResNet-FPN uses BatchNorm; this backbone's norm has no running "
                          "statistics (GroupNorm?), so its weights cannot carry over.")
    bottleneck = "backbone.body.layer1.0.conv3.weight" in state_dict
    blocks = len({k.split(".")[3] for k in state_dict if k.startswith("backbone.body.layer3.")})
    if (bottleneck, blocks) not in _RESNETS:
        kind = "bottleneck" if bottleneck else "basic"
        raise DetkitError(f"{where}: a ResNet with {blocks} {kind} blocks in layer3 is none of "
                          f"{', '.join(sorted(_RESNETS.values()))}.")
    return _RESNETS[(bottleneck, blocks)]


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
    """The detkit ResNet-FPN detector equal to a torchvision ResNet-FPN FasterRCNN model or its state_dict."""
    if isinstance(model_or_state_dict, nn.Module):
        settings = _settings_from_torchvision(model_or_state_dict)
        state_dict = model_or_state_dict.state_dict()
    else:
        settings, state_dict = {}, model_or_state_dict
    num_classes = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    frozen = not any(k.endswith("num_batches_tracked") for k in state_dict if k.startswith("backbone.body."))
    name = _resnet_name(state_dict, "from_torchvision")
    tree = {"model": {"backbone": {"name": name, "fpn": True, "norm": "frozen_bn" if frozen else "bn",
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
    """A torchvision ResNet-FPN FasterRCNN with the detector's weights, anchors, pooler, box head and settings."""
    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.misc import FrozenBatchNorm2d

    state_dict = detector.state_dict()
    name = _resnet_name(state_dict, "to_torchvision")
    num_classes = detector.roi_heads.box_predictor.cls_score.out_features
    frozen = any(isinstance(m, FrozenBatchNorm2d) for m in detector.backbone.modules())
    pre, heads, rpn = detector.preprocessor, detector.roi_heads, detector.rpn
    pooler = heads.pooler
    if pooler.pooler_type != "roi_align" or pooler.aligned:
        warnings.warn(f"to_torchvision: the detector pools with {pooler.pooler_type} (aligned={pooler.aligned}); "
                      "torchvision's MultiScaleRoIAlign is RoIAlign with aligned=False, so its boxes will differ "
                      "slightly.", stacklevel=2)
    backbone = resnet_fpn_backbone(backbone_name=name, weights=None, trainable_layers=5,
                                   norm_layer=FrozenBatchNorm2d if frozen else nn.BatchNorm2d)
    anchors = rpn.anchor_generator
    fc6 = heads.box_head.fc6
    model = TorchvisionFasterRCNN(
        backbone,
        rpn_anchor_generator=AnchorGenerator(tuple(anchors.sizes), tuple(anchors.aspect_ratios)),
        box_roi_pool=MultiScaleRoIAlign(detector.box_feature_names, pooler.output_size, pooler.sampling_ratio),
        box_head=TwoMLPHead(fc6.in_features, fc6.out_features),
        box_predictor=FastRCNNPredictor(fc6.out_features, num_classes),
        min_size=pre.test_min_size, max_size=pre.max_size, image_mean=pre.pixel_mean.flatten().tolist(),
        image_std=pre.pixel_std.flatten().tolist(),
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n["testing"], rpn_post_nms_top_n_test=rpn.post_nms_top_n["testing"],
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n["training"],
        rpn_post_nms_top_n_train=rpn.post_nms_top_n["training"], rpn_nms_thresh=rpn.nms_thresh,
        box_score_thresh=heads.score_thresh, box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_img)
    with torch.no_grad():
        model.load_state_dict(_state_dict_to_torchvision(state_dict))
    return model
