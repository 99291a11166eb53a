"""A training run's starting weights, read from the config: model.weights (a whole detector) and the defaults
that follow from starting pretrained (norm, trainable stages, input normalisation).

Keys read here (the edge, with detkit.modeling.build):
- ``model.weights``: a torchvision detection weights name, a torchvision detector state_dict file, or a detkit
  ``model_final.pth`` / ``last.pth``. Only ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1`` among torchvision's
  detection weights has detkit's layout (ResNet-50 FPN, RPN with one 3x3 conv, 2-MLP box head): the _v2 models
  (conv-BN RPN and box heads), MobileNet, RetinaNet, FCOS, SSD, Mask and Keypoint R-CNN do not.
- ``model.backbone.norm: auto`` -> frozen_bn when starting from weights, else bn; ``model.backbone.trainable_layers:
  null`` -> 3 when starting from weights, else 5 (torchvision's ``fasterrcnn_resnet50_fpn``: ``trainable_backbone_
  layers`` 3 and FrozenBatchNorm2d when ``weights`` or ``weights_backbone`` is given, 5 and BatchNorm otherwise).
- ``input.pixel_mean / pixel_std: null`` -> the normalisation of ``model.backbone.weights`` (a torchvision name's
  transforms), else ImageNet's. A value set in the config wins; a note says so when it differs from the weights'.
Class-dependent weights are those of ``roi_heads.box_predictor`` (class logits and class-specific box deltas;
R-CNN's SVMs and box regressors): with another class count they keep their fresh initialisation, and the run
prints which.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.config_checks import config_value
from detkit.errors import DetkitError
from detkit.modeling.backbones import pretrained
from detkit.modeling.detectors.faster_rcnn import IMAGENET_MEAN, IMAGENET_STD

PRETRAINED_TRAINABLE_LAYERS = 3  # torchvision detection builders' trainable_backbone_layers with weights
CLASS_DEPENDENT_PREFIX = "roi_heads.box_predictor."
_TV_RPN_CONV, _DK_RPN_CONV = "rpn.head.conv.0.0.", "rpn.head.conv."  # torchvision wraps the RPN conv (>= 0.15)
_SHOWN = 5
# torchvision detection weights with detkit's layout -> the config values their network was built with (each key:
# accepted values, the first is what is set). torchvision/models/detection/faster_rcnn.py: resnet50 + FPN on
# layer1-4 with P6 by max-pool, anchors 32-512 x (0.5, 1, 2), MultiScaleRoIAlign(7, sampling_ratio=2) which is
# RoIAlign aligned=False, TwoMLPHead(256 * 7 * 7, 1024); FrozenBatchNorm2d with eps 0 (overwrite_eps(model, 0.0)).
TORCHVISION_DETECTORS: dict[str, dict[str, tuple]] = {
    "FasterRCNN_ResNet50_FPN_Weights": {
        "model.arch": ("faster_rcnn", "fast_rcnn"),
        "model.backbone.name": ("resnet50",),
        "model.backbone.fpn": (True,),
        "model.rpn.anchor_sizes": ([[32.0], [64.0], [128.0], [256.0], [512.0]],),
        "model.rpn.aspect_ratios": ([0.5, 1.0, 2.0],),
        "model.roi_heads.pooler": ("roi_align",),
        "model.roi_heads.pooler_resolution": (7,),
        "model.roi_heads.sampling_ratio": (2,),
        "model.roi_heads.aligned": (False,),
        "model.roi_heads.box_head": ("auto", "two_mlp"),
        "model.roi_heads.representation_size": (1024,),
    },
}
TORCHVISION_FROZEN_BN_EPS = 0.0


def starts_pretrained(cfg: Any) -> bool:
    """True when the config starts from weights (model.weights or model.backbone.weights)."""
    return bool(cfg.model.weights or cfg.model.backbone.weights)


def _torchvision_detector(spec: str | None) -> pretrained.WeightsRef | None:
    """The WeightsRef of a torchvision detection weights name detkit can build, None for anything but a name;
    DetkitError for a torchvision name whose network detkit does not build."""
    if not spec or not pretrained.is_torchvision_name(spec):
        return None
    ref = pretrained.resolve(spec)
    enum = type(ref.weights).__name__
    if enum not in TORCHVISION_DETECTORS:
        from torchvision.models import detection, list_models

        kind = "a detector detkit does not build" if ref.arch in list_models(module=detection) else \
            "a classification network's (use it as model.backbone.weights)"
        raise DetkitError(f"model.weights={ref.spec} are {kind}: torchvision's {ref.arch}; of torchvision's "
                          "detection weights only FasterRCNN_ResNet50_FPN_Weights.COCO_V1 has detkit's layout")
    return ref


def resolved_config(cfg: Any, *, init_weights: bool = True) -> Any:
    """A copy of cfg with its automatic values filled (norm, trainable_layers, pixel mean / std, a torchvision
    detector's settings); model.backbone.weights is None in it when nothing should load into the backbone
    (init_weights False: the weights come from a trained file; or model.weights set: it covers the backbone).

    Raises DetkitError for a config key, set by the user, that disagrees with a torchvision detector's settings,
    or for model.weights and model.backbone.weights both set.
    """
    out = copy.deepcopy(cfg)
    m, bb = out.model, out.model.backbone
    if m.weights and bb.weights:
        raise DetkitError(f"set one of model.weights ({m.weights}) and model.backbone.weights ({bb.weights}): a "
                          "whole detector's weights already hold its backbone's")
    _apply_torchvision_settings(out)
    if bb.norm == "auto":
        bb.norm = "frozen_bn" if starts_pretrained(cfg) else "bn"
    if bb.trainable_layers is None:
        bb.trainable_layers = PRETRAINED_TRAINABLE_LAYERS if starts_pretrained(cfg) else 5
    _fill_normalization(out)
    if not init_weights or m.weights:
        bb.weights = None
    return out


def _apply_torchvision_settings(cfg: Any) -> None:
    """Sets the keys a torchvision detector's weights need where the user left them; refuses user-set ones."""
    ref = _torchvision_detector(cfg.model.weights)
    if ref is None:
        return
    user_keys = getattr(cfg, "user_keys", frozenset())
    sources = getattr(cfg, "sources", {})
    conflicts, changed = [], []
    for key, accepted in TORCHVISION_DETECTORS[type(ref.weights).__name__].items():
        value = config_value(cfg, key)
        if value in accepted:
            continue
        if key in user_keys:
            where = f" (in {sources[key]})" if key in sources else ""
            conflicts.append(f"{key}={value}{where} (needs {accepted[0]})")
        else:
            section, _, leaf = key.rpartition(".")
            setattr(config_value(cfg, section), leaf, accepted[0])
            changed.append(f"{key}={accepted[0]}")
    if conflicts:
        raise DetkitError(f"model.weights={ref.spec} was trained with other settings than these config keys: "
                          f"{', '.join(conflicts)}; remove them or set them so")
    if changed:
        print(f"model.weights={ref.spec}: set {', '.join(changed)} (the network its weights were trained in)",
              flush=True)


def _fill_normalization(cfg: Any) -> None:
    """input.pixel_mean / pixel_std from model.backbone.weights' transforms where null, else ImageNet's."""
    own = pretrained.normalization(cfg.model.backbone.weights)
    mean, std = own if own is not None else (list(IMAGENET_MEAN), list(IMAGENET_STD))
    given = cfg.input.pixel_mean, cfg.input.pixel_std
    if own is not None and given != (None, None) and any(
            g is not None and [round(x, 5) for x in g] != [round(x, 5) for x in w] for g, w in zip(given, own)):
        print(f"input.pixel_mean / pixel_std set in the config ({given[0]}, {given[1]}) win over the normalisation "
              f"of model.backbone.weights={cfg.model.backbone.weights} ({mean}, {std})", flush=True)
    cfg.input.pixel_mean = list(given[0]) if given[0] is not None else mean
    cfg.input.pixel_std = list(given[1]) if given[1] is not None else std


def finish_build(model: nn.Module, cfg: Any, *, init_weights: bool = True) -> nn.Module:
    """After the build: the frozen-BN epsilon of a torchvision detector's weights, and model.weights loaded when
    init_weights (a fresh training run). Returns the model."""
    if _torchvision_detector(cfg.model.weights) is not None:
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = TORCHVISION_FROZEN_BN_EPS
    if init_weights and cfg.model.weights:
        load_detector_weights(model, cfg.model.weights)
    return model


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def load_detector_weights(model: nn.Module, spec: str) -> list[str]:
    """Loads a whole detector's weights (model.weights) into ``model``; returns the class-dependent keys left at
    their fresh initialisation because the class count differs (printed too).

    A torchvision state_dict's RPN conv (``rpn.head.conv.0.0.*``) is renamed to detkit's (and such a file needs
    ``model.roi_heads.aligned: false``, torchvision's MultiScaleRoIAlign; DetkitError otherwise); BatchNorm's
    ``num_batches_tracked`` counters are not weights; a part the model lacks altogether (a Fast R-CNN has no
    ``rpn``) is skipped with a note. Raises DetkitError naming the first keys that are missing, unexpected, or of
    another shape outside the class-dependent predictor.
    """
    loaded = pretrained.read_state_dict(spec)
    pooler = getattr(getattr(model, "roi_heads", None), "pooler", None)
    if any(k.startswith(_TV_RPN_CONV) for k in loaded) and getattr(pooler, "aligned", False):
        raise DetkitError(f"model.weights={spec} is a torchvision detector ({_TV_RPN_CONV}* keys), trained with "
                          "RoIAlign aligned=False: set model.roi_heads.aligned=false")
    state = {(_DK_RPN_CONV + k[len(_TV_RPN_CONV):] if k.startswith(_TV_RPN_CONV) else k): v
             for k, v in loaded.items() if not k.endswith("num_batches_tracked")}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    parts = {k.split(".")[0] for k in own}
    skipped = sorted({k.split(".")[0] for k in state if k.split(".")[0] not in parts})
    if skipped and len(skipped) < len({k.split(".")[0] for k in state}):
        print(f"model.weights={spec}: not loading {', '.join(p + '.*' for p in skipped)} (this detector has no "
              "such part)", flush=True)
        state = {k: v for k, v in state.items() if k.split(".")[0] not in skipped}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        problems = ([f"the model's {_first(missing)} are not in it"] if missing else []) + (
            [f"its {_first(unexpected)} have no place in the model"] if unexpected else [])
        raise DetkitError(f"model.weights={spec} is another architecture than the config's: "
                          f"{'; '.join(problems)}")
    differ = [k for k in own if state[k].shape != own[k].shape]
    per_class = [k for k in differ if k.startswith(CLASS_DEPENDENT_PREFIX)]
    other = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in differ if k not in per_class]
    if other:
        raise DetkitError(f"model.weights={spec} has tensors of other shapes than the model (file vs model): "
                          f"{_first(other)}")
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state.items() if k not in per_class}, strict=False)
    if per_class:
        print(f"model.weights={spec}: another class count, so {', '.join(per_class)} start from a fresh "
              "initialisation; every other weight is loaded", flush=True)
    return per_class
