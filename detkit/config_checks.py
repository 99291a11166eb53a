"""Value checks a type cannot express (a count must be positive, a thread count cannot be -1), run on every loaded
config so bad values fail at load time in one line naming the key, not later as a traceback deep in a module."""
from __future__ import annotations

import dataclasses
from typing import Any

from detkit.errors import DetkitError
from detkit.keys import flatten_keys

# Keys whose value must be an integer >= 1 (None allowed where the schema allows it).
POSITIVE = (
    "threads", "data.max_image_pixels", "input.max_size", "input.test_min_size",
    "solver.max_iter", "solver.batch_size", "solver.checkpoint_period", "solver.log_period",
    "model.num_classes", "model.rpn.pre_nms_top_n_train", "model.rpn.pre_nms_top_n_test",
    "model.rpn.post_nms_top_n_train", "model.rpn.post_nms_top_n_test", "model.rpn.batch_size_per_image",
    "model.roi_heads.batch_size_per_image", "model.roi_heads.pooler_resolution",
    "model.roi_heads.representation_size", "model.roi_heads.detections_per_img", "model.roi_heads.svd_rank",
    "proposals.max_side", "proposals.top_k", "proposals.workers", "test.batch_size",
)
# Keys whose value must be >= 0.
NON_NEGATIVE = ("data.num_workers", "solver.warmup_iters", "train.eval_period", "model.roi_heads.sampling_ratio")
# Keys whose value must lie in (0, 1].
FRACTION = ("model.rpn.positive_fraction", "model.roi_heads.positive_fraction")

# model.roi_heads keys R-CNN's heads never read: its pooler is the region warper (model.rcnn.warp_size,
# context_pad), its box head the whole CNN, its foreground / background split fixed at IoU 0.5 (§2.3), and its test
# threshold and NMS are model.rcnn.score_thresh / nms_thresh (SVM margins, NMS 0.3, §2.2).
RCNN_UNUSED_ROI_HEADS = ("pooler", "pooler_resolution", "sampling_ratio", "aligned", "box_head", "fg_iou_thresh",
                         "bg_iou_thresh", "bg_iou_lo", "representation_size", "score_thresh", "nms_thresh")
# Keys (a section stands for every key under it) that an arch's builder never reads: setting one is an error
# (detkit.modeling.build.check_keys_apply), since a key silently ignored misleads. model.rpn.* applies to every
# arch when proposals.method is rpn (an RPN of that config fills the proposal store).
IGNORED_BY_ARCH: dict[str, tuple[str, ...]] = {
    "faster_rcnn": ("model.rcnn",),
    "fast_rcnn": ("model.rpn", "model.rcnn"),
    "rcnn": ("model.rpn", "model.backbone.channels_last", *(f"model.roi_heads.{k}" for k in RCNN_UNUSED_ROI_HEADS)),
}

# train.* sections a recipe never reads (the key of detkit.recipes.RECIPES: model.arch=rcnn, else train.schedule).
# Set on the command line, one is an error (detkit.config.load_config); a recipe file may keep sections for the
# other schedules (configs/demo.yaml keeps train.alternating), so there they are not.
IGNORED_BY_RECIPE: dict[str, tuple[str, ...]] = {
    "joint": ("train.exact_joint", "train.alternating"),
    "exact_joint": ("train.alternating",),
    "alternating": ("train.exact_joint", "train.eval_period"),
    "rcnn": ("train.exact_joint", "train.alternating", "train.eval_period"),
}


def recipe_ignored_keys(config: Any) -> list[str]:
    """Every dotted train.* key the config's recipe ignores, in schema order."""
    recipe = "rcnn" if config.model.arch == "rcnn" else config.train.schedule
    sections = IGNORED_BY_RECIPE.get(recipe, ())
    return [key for key in leaf_keys(config) if any(key == s or key.startswith(s + ".") for s in sections)]


def check_values(config: Any) -> None:
    """Raise a DetkitError naming the first key whose value is out of its range."""
    for key in POSITIVE:
        value = config_value(config, key)
        if value is not None and value < 1:
            raise DetkitError(f"config key {key!r} must be at least 1{_or_null(config, key)}, got {value}")
    for key in NON_NEGATIVE:
        value = config_value(config, key)
        if value is not None and value < 0:
            raise DetkitError(f"config key {key!r} must be 0 or more, got {value}")
    for key in FRACTION:
        value = config_value(config, key)
        if value is not None and not 0 < value <= 1:
            raise DetkitError(f"config key {key!r} must lie in (0, 1], got {value}")
    sizes = config_value(config, "input.min_size")
    for size in sizes if isinstance(sizes, list) else [sizes]:
        if size < 1:
            raise DetkitError(f"config key 'input.min_size' must be at least 1, got {sizes}")


def ignored_keys(config: Any) -> list[str]:
    """Every dotted leaf key of the schema that config.model.arch ignores, in schema order."""
    sections = [s for s in IGNORED_BY_ARCH[config.model.arch]
                if not (s == "model.rpn" and config.proposals.method == "rpn")]
    return [key for key in leaf_keys(config) if any(key == s or key.startswith(s + ".") for s in sections)]


def leaf_keys(config: Any) -> list[str]:
    """The dotted keys of every value (not section) in a config dataclass (provenance fields left out)."""
    tree = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if not f.metadata.get("provenance")}
    return list(flatten_keys({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in tree.items()}))


def config_value(config: Any, dotted: str) -> Any:
    """The value of a dotted key in a config (None where the path does not exist)."""
    node = config
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node


def _or_null(config: Any, dotted: str) -> str:
    return " or null" if dotted in ("threads", "data.max_image_pixels", "input.test_min_size", "model.num_classes",
                                    "model.roi_heads.svd_rank") else ""
