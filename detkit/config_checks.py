"""The checks of a whole config that a key's type cannot express, run once on every config: by
detkit.config.load_config, or, for a Config built in Python, by ensure_checked (build_model, detkit.recipes.train).

Value ranges (a count must be positive, a thread count cannot be -1), and the keys that do not apply: those the
config's arch and recipe do not declare they read (detkit.registries.ARCHS / RECIPES ``reads``). Each fails in one
line naming the key and the file or command line that set it, not later as a traceback deep in a module.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

from detkit import registries
from detkit.config_schema import Config, RoIHeadsConfig
from detkit.errors import DetkitError
from detkit.keys import flatten_keys

COMMAND_LINE = "the command line"  # the source of a key set by an override (detkit.config.parse_overrides)

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

# The keys that do not apply to a config come from what its parts declare they read (detkit.registries: ARCHS for
# model.*, RECIPES for train.*); setting one that does not apply is an error, since a key silently ignored misleads.
# Keys directly under model (arch, num_classes, class_names, category_ids) and train.schedule apply to every part.


def _reads(entry: Any) -> tuple[str, ...]:
    """The keys a registry entry declares it reads (none for a bare function)."""
    return tuple(getattr(entry, "reads", ()))


def _covered(key: str, reads: tuple[str, ...] | list[str]) -> bool:
    return any(key == r or key.startswith(r + ".") for r in reads)


def has_rpn(arch: str) -> bool:
    """True for an arch with an RPN of its own: one that declares it reads model.rpn (registries.ARCHS)."""
    return _covered("model.rpn", _reads(registries.ARCHS[arch]))


def arch_reads(config: Any) -> tuple[str, ...]:
    """The model.* keys and sections config.model.arch reads: its ARCHS declaration, plus model.rpn when
    proposals.method is rpn (an RPN of that config fills the proposal store)."""
    reads = _reads(registries.ARCHS[config.model.arch])
    return reads + ("model.rpn",) if config.proposals.method == "rpn" else reads


def ignored_keys(config: Any) -> list[str]:
    """Every dotted leaf key under a model.* section that config.model.arch does not read, in schema order."""
    reads = arch_reads(config)
    return [key for key in leaf_keys(config) if key.startswith("model.") and key.count(".") >= 2
            and not _covered(key, reads)]


def recipe_name(config: Any) -> str:
    """The registries.RECIPES key of a config: its model.arch when that arch has a recipe, else train.schedule."""
    return registries.recipe_of(config.model.arch, config.train.schedule)


def recipe_ignored_keys(config: Any) -> list[str]:
    """Every dotted train.* key (train.schedule aside) the config's recipe does not read, in schema order."""
    reads = _reads(registries.RECIPES[recipe_name(config)]) + ("train.schedule",)
    return [key for key in leaf_keys(config) if key.startswith("train.") and not _covered(key, reads)]


def _unread_roi_heads_keys(arch: str) -> tuple[str, ...]:
    reads = _reads(registries.ARCHS[arch])
    return tuple(f.name for f in dataclasses.fields(RoIHeadsConfig) if not _covered(f"model.roi_heads.{f.name}", reads))


# model.roi_heads keys R-CNN's heads never read (from its registries.ARCHS declaration).
RCNN_UNUSED_ROI_HEADS = _unread_roi_heads_keys("rcnn")


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


def check_schedule(cfg: Any) -> None:
    """Raises DetkitError when train.schedule cannot train the model: alternating and exact_joint need an RPN, and
    exact_joint a pooler with a box gradient (RoIPool's max has none worth following)."""
    schedule, sources = cfg.train.schedule, cfg.sources
    where = lambda key: f"{key} (in {sources[key]})" if key in sources else key  # noqa: E731
    if schedule != "joint" and not has_rpn(cfg.model.arch):
        raise DetkitError(f"config key {where('train.schedule')}={schedule} needs an RPN: it does not apply to "
                          f"{where('model.arch')}={cfg.model.arch}")
    if schedule == "exact_joint" and cfg.model.roi_heads.pooler == "roi_pool":
        raise DetkitError(f"config key {where('train.schedule')}=exact_joint needs a pooler differentiable with "
                          f"respect to the box: {where('model.roi_heads.pooler')}=roi_pool has no box gradient "
                          "(use roi_align)")
    scale = cfg.train.exact_joint.proposal_grad_scale
    if not (math.isfinite(scale) and scale > 0):
        raise DetkitError(f"config key {where('train.exact_joint.proposal_grad_scale')} must be a positive number, "
                          f"got {scale}")
    alt = cfg.train.alternating
    for key, values in (("iter_fractions", alt.iter_fractions), ("lr_factors", alt.lr_factors)):
        if len(values) != 4 or any(v <= 0 for v in values):
            raise DetkitError(f"config key {where('train.alternating.' + key)} must hold 4 positive numbers (one per "
                              f"step), got {values}")


def check_keys_apply(cfg: Any) -> None:
    """Raises DetkitError naming the keys the arch does not read (ignored_keys) that the user's files,
    their _base_ files or the overrides set, whatever the value (default included), or that code changed from the
    default; each named with the file or command line that set it. Also checks train.schedule and svd_rank."""
    check_schedule(cfg)
    arch = cfg.model.arch
    sources: dict[str, str] = cfg.sources
    user_keys: frozenset[str] = cfg.user_keys
    default = Config()
    bad = [f"{k} (in {sources[k]})" if k in sources else k for k in ignored_keys(cfg)
           if k in user_keys or config_value(cfg, k) != config_value(default, k)]
    if bad:
        raise DetkitError(f"config keys that do not apply to model.arch={arch}: {', '.join(bad)}")
    check_svd_rank(cfg)


def check_svd_rank(cfg: Any) -> None:
    """Raises DetkitError when model.roi_heads.svd_rank is set for a box head without fc layers to compress."""
    if cfg.model.roi_heads.svd_rank is None:
        return
    name, sources = cfg.model.backbone.name, cfg.sources
    key = "model.roi_heads.svd_rank" + (f" (in {sources['model.roi_heads.svd_rank']})"
                                        if "model.roi_heads.svd_rank" in sources else "")
    if cfg.model.arch == "rcnn" and not name.startswith("vgg"):
        raise DetkitError(f"config key {key} does not apply to model.arch=rcnn with model.backbone.name={name}: "
                          "its region CNN has no fc6/fc7 to compress (a vgg16 one has)")
    if cfg.model.arch != "rcnn" and box_head_kind(cfg) == "res5":
        raise DetkitError(f"config key {key} does not apply to the res5 box head of model.arch={cfg.model.arch}: it "
                          "has no fc6/fc7 to compress (two_mlp and vgg_fc have)")


def box_head_kind(cfg: Any) -> str:
    """model.roi_heads.box_head with auto resolved: two_mlp with FPN, else the backbone's own (vgg_fc or res5)."""
    bb, kind = cfg.model.backbone, cfg.model.roi_heads.box_head
    if kind != "auto":
        return kind
    return "two_mlp" if bb.fpn else "vgg_fc" if bb.name.startswith("vgg") else "res5"


def check_command_line_keys(cfg: Any) -> None:
    """Raises DetkitError naming the train.* keys set on the command line that the config's recipe does not read
    (a recipe file may keep sections for the other schedules: configs/demo.yaml keeps train.alternating)."""
    ignored = [k for k in recipe_ignored_keys(cfg) if cfg.sources.get(k) == COMMAND_LINE]
    if ignored:
        name = recipe_name(cfg)
        recipe = f"model.arch={name}" if name in registries.ARCHS else f"train.schedule={name}"
        raise DetkitError(f"config keys set on the command line that {recipe} does not read: {', '.join(ignored)}")


def check_config(cfg: Any) -> None:
    """The checks of a whole config that a key's type cannot express: value ranges (check_values), train.schedule
    against the model, keys that do not apply to model.arch, svd_rank (check_keys_apply). Raises DetkitError naming
    the key and the file or command line that set it. Marks the config checked (ensure_checked then skips it until
    a key changes)."""
    check_values(cfg)
    check_keys_apply(cfg)
    cfg.checked = _fingerprint(cfg)


def ensure_checked(cfg: Any) -> None:
    """check_config, unless this config was checked with the keys it holds now (detkit.config.load_config checks
    every config it loads): a Config built in Python, or changed after loading, is checked here, once."""
    if cfg.checked is None or cfg.checked != _fingerprint(cfg):
        check_config(cfg)


def _fingerprint(cfg: Any) -> tuple:
    """The config's keys and values and the keys the user set: what the checks read."""
    keys = {f.name: copy.deepcopy(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
            if not f.metadata.get("provenance")}
    return keys, cfg.user_keys, tuple(sorted(cfg.sources.items()))
