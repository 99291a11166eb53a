"""Value checks a type cannot express (a count must be positive, a thread count cannot be -1), run on every loaded
config so bad values fail at load time in one line naming the key, not later as a traceback deep in a module."""
from __future__ import annotations

from typing import Any

from detkit.errors import DetkitError

# Keys whose value must be an integer >= 1 (None allowed where the schema allows it).
POSITIVE = (
    "threads", "data.max_image_pixels", "input.max_size", "input.test_min_size",
    "solver.max_iter", "solver.batch_size", "solver.checkpoint_period", "solver.log_period",
    "model.num_classes", "model.rpn.pre_nms_top_n_train", "model.rpn.pre_nms_top_n_test",
    "model.rpn.post_nms_top_n_train", "model.rpn.post_nms_top_n_test", "model.rpn.batch_size_per_image",
    "model.roi_heads.batch_size_per_image", "model.roi_heads.pooler_resolution",
    "model.roi_heads.representation_size", "model.roi_heads.detections_per_img", "model.roi_heads.svd_rank",
    "proposals.max_side", "proposals.top_k", "proposals.workers",
)
# Keys whose value must be >= 0.
NON_NEGATIVE = ("data.num_workers", "solver.warmup_iters", "train.eval_period", "model.roi_heads.sampling_ratio")
# Keys whose value must lie in (0, 1].
FRACTION = ("model.rpn.positive_fraction", "model.roi_heads.positive_fraction")


def check_values(config: Any) -> None:
    """Raise a DetkitError naming the first key whose value is out of its range."""
    for key in POSITIVE:
        value = _get(config, key)
        if value is not None and value < 1:
            raise DetkitError(f"config key {key!r} must be at least 1{_or_null(config, key)}, got {value}")
    for key in NON_NEGATIVE:
        value = _get(config, key)
        if value is not None and value < 0:
            raise DetkitError(f"config key {key!r} must be 0 or more, got {value}")
    for key in FRACTION:
        value = _get(config, key)
        if value is not None and not 0 < value <= 1:
            raise DetkitError(f"config key {key!r} must lie in (0, 1], got {value}")
    sizes = _get(config, "input.min_size")
    for size in sizes if isinstance(sizes, list) else [sizes]:
        if size < 1:
            raise DetkitError(f"config key 'input.min_size' must be at least 1, got {sizes}")


def _get(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node


def _or_null(config: Any, dotted: str) -> str:
    return " or null" if dotted in ("threads", "data.max_image_pixels", "input.test_min_size", "model.num_classes",
                                    "model.roi_heads.svd_rank") else ""
