"""The registries: name -> part, for every config value that picks a part, at the bottom so that the schema's
allowed values come from them.

Each dict is the one place a part registers: ``model.arch`` (ARCHS), ``train.schedule`` and model.arch=rcnn's stages
(RECIPES), ``data.*.format`` (FORMATS), ``model.backbone.name`` (BACKBONES), ``model.roi_heads.box_head``
(BOX_HEADS) and ``model.roi_heads.pooler`` (POOLERS). detkit.config_schema reads the names (a registered name is a
valid value, any other one a DetkitError listing them), config_checks the keys each part declares it reads, and
the heavy module (detkit.recipes, detkit.modeling.build, detkit.data, ...) imports its function when it runs.

A part is a ``"module:function"`` string (so that nothing here imports a layer, and the inference path, which
loads the schema, loads no training code) or the function itself (a part defined outside detkit, e.g. in a
test). This module imports nothing of detkit but the errors.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from detkit.errors import DetkitError

Target = Union[str, Callable[..., Any]]


@dataclass(frozen=True)
class Part:
    """A registered part: ``target`` builds or runs it; ``reads`` are the dotted config keys it reads (a section
    stands for every key under it), from which config_checks derives the keys that do not apply."""

    target: Target
    reads: tuple[str, ...] = ()


def resolve(target: Target | Part) -> Callable[..., Any]:
    """The function a registry entry names: a ``"module:function"`` string is imported, a callable returned as is.
    Raises DetkitError when the module or the function does not exist."""
    target = target.target if isinstance(target, Part) else target
    if callable(target):
        return target
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise DetkitError(f"registered part {target!r} cannot be loaded: {error}") from None


@dataclass(frozen=True)
class Names:
    """A schema annotation's metadata: the valid values of a key are the names of a registry (a mapping, or a
    function giving the names) at the time the config is checked."""

    registry: Mapping[str, Any] | Callable[[], list[str]]

    def names(self) -> list[str]:
        return list(self.registry()) if callable(self.registry) else list(self.registry)


# model.arch -> the builder of modeling's edge, ``(cfg, num_classes) -> TwoStageDetector``, and the model.* keys it
# reads (model.arch, num_classes, class_names, category_ids apply to every arch). model.rpn.* applies to every arch
# when proposals.method is rpn (an RPN of that config fills the proposal store). R-CNN's pooler is the region warper
# (model.rcnn.warp_size, context_pad), its box head the whole CNN, its foreground / background split fixed at IoU
# 0.5 (§2.3), and its test threshold and NMS are model.rcnn.score_thresh / nms_thresh (SVM margins, NMS 0.3, §2.2).
ARCHS: dict[str, Part] = {
    "faster_rcnn": Part("detkit.modeling.build:build_faster_rcnn",
                        reads=("model.backbone", "model.rpn", "model.roi_heads")),
    "fast_rcnn": Part("detkit.modeling.build:build_fast_rcnn", reads=("model.backbone", "model.roi_heads")),
    "rcnn": Part("detkit.modeling.build:build_rcnn",
                 reads=("model.backbone.name", "model.backbone.fpn", "model.backbone.norm", "model.backbone.weights",
                        "model.backbone.trainable_layers", "model.roi_heads.batch_size_per_image",
                        "model.roi_heads.positive_fraction", "model.roi_heads.detections_per_img",
                        "model.roi_heads.svd_rank", "model.rcnn")),
}

# Recipe name -> ``run(cfg, resume=, progress=, overwrite=) -> metrics`` (detkit.recipes.train) and the train.*
# keys it reads (train.schedule applies to every recipe). A name that is also an ARCHS key is the recipe of that
# model.arch whatever train.schedule says (R-CNN's stages); the others are train.schedule's values.
RECIPES: dict[str, Part] = {
    "joint": Part("detkit.recipes:run_joint", reads=("train.eval_period",)),
    "alternating": Part("detkit.recipes:run_alternating", reads=("train.alternating",)),
    "exact_joint": Part("detkit.recipes:run_exact_joint", reads=("train.exact_joint", "train.eval_period")),
    "rcnn": Part("detkit.recipes:run_rcnn"),
}


def schedules() -> list[str]:
    """train.schedule's valid values: the RECIPES names that are not an arch's own recipe."""
    return [name for name in RECIPES if name not in ARCHS]


def recipe_of(arch: str, schedule: str) -> str:
    """The RECIPES key of a config: its model.arch when that arch has a recipe of its own, else train.schedule."""
    return arch if arch in RECIPES else schedule


# data.*.format -> ``(root, split, ann_file, train, transforms, skip_corrupt, demo_cache) -> DetectionDataset``.
FORMATS: dict[str, Target] = {
    "demo": "detkit.data:build_demo",
    "voc": "detkit.data:build_voc",
    "coco": "detkit.data:build_coco",
}

# model.backbone.name -> its family in detkit.modeling.backbones.build (vgg: conv5_3 at stride 16; resnet: C4, or
# C2-C5 + FPN P2-P6), or a backbone of its own: ``(name, *, fpn, norm, weights, trainable_layers) -> nn.Module``
# giving an ordered dict of feature maps, with ``out_channels`` and ``strides`` ({name: stride}).
BACKBONES: dict[str, Target] = {
    "vgg16": "vgg",
    "vgg16_bn": "vgg",
    "resnet18": "resnet",
    "resnet34": "resnet",
    "resnet50": "resnet",
    "resnet101": "resnet",
}

# model.roi_heads.box_head -> ``(cfg, in_channels) -> nn.Module`` from pooled features (R, C, S, S) to (R, D)
# with ``out_channels`` D; auto: two_mlp with FPN, else the backbone's own (vgg_fc or res5).
BOX_HEADS: dict[str, Target] = {
    "auto": "detkit.modeling.build:auto_box_head",
    "two_mlp": "detkit.modeling.build:two_mlp_box_head",
    "vgg_fc": "detkit.modeling.build:vgg_fc_box_head",
    "res5": "detkit.modeling.build:res5_box_head",
}

# model.roi_heads.pooler -> the pooler_type of detkit.modeling.roi_heads.poolers.RoIPooler (detkit.ops).
POOLERS: dict[str, str] = {"roi_align": "roi_align", "roi_pool": "roi_pool"}
