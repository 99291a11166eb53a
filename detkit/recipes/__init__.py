"""Training recipes: what tools/train.py runs, one module per recipe, above the engine (loop, solver, checkpoints).

RECIPES (detkit.registries.RECIPES, re-exported) maps a config to its recipe: model.arch=rcnn trains with R-CNN's
stages (detkit.recipes.rcnn) whatever train.schedule says; otherwise train.schedule picks joint / exact_joint
(detkit.recipes.joint) or alternating (detkit.recipes.alternating). A recipe is
``run(cfg, resume=, progress=, overwrite=) -> metrics`` and declares the train.* keys it reads; adding one is one
module plus one line in registries.RECIPES (docs/architecture.md).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detkit.config import Config
from detkit.config_checks import ensure_checked, recipe_name
from detkit.edge import setup
from detkit.engine import run_dir
from detkit.registries import RECIPES, resolve


def _single_stage(schedule: str) -> Callable[..., dict[str, float]]:
    def run(cfg: Config, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, float]:
        return train_in_one_folder(cfg, schedule, resume=resume, progress=progress, overwrite=overwrite)
    return run


# The recipes registries.RECIPES names (train.schedule, or model.arch=rcnn).
run_joint = _single_stage("joint")
run_exact_joint = _single_stage("exact_joint")
run_alternating = _single_stage("alternating")


def run_rcnn(cfg: Config, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    from detkit.recipes.rcnn.schedule import train_rcnn

    return train_rcnn(cfg, resume=resume, progress=progress, overwrite=overwrite)


def train(cfg: Config, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, float]:
    """Trains the config's detector with its recipe, evaluates it on data.test and writes metrics.json; returns the
    metrics. A folder holding a run needs `resume` or `overwrite`; a resume that changes the model is refused before
    anything is written, other changes are warned about and recorded (detkit.engine.run_dir). A Config built in
    Python (not by load_config) has its keys checked here, before any slow step."""
    from detkit.modeling.build.weights import resolved_config

    ensure_checked(cfg)
    # The automatic values (norm, trainable stages, normalisation, a torchvision detector's settings) made concrete
    # once, so the run stores, compares on --resume and saves what it builds (runs from before the automatic
    # defaults resume unchanged).
    cfg = resolved_config(cfg)
    if not resume:
        # A fresh run fetches and reads its starting weights before it writes anything: offline, or with a
        # truncated file, the folder stays clean and the same command runs once the file is in place. A mistyped
        # data path is found first, before a download.
        from detkit.data import check_data_paths
        from detkit.modeling.backbones.pretrained import read_state_dict

        for split in ("train", "test"):
            d = getattr(cfg.data, split)
            check_data_paths(d.format, d.root, d.split, d.ann_file, train=split == "train")

        for spec in (cfg.model.weights, cfg.model.backbone.weights):
            if spec:
                read_state_dict(spec, progress=progress)
    return resolve(RECIPES[recipe_name(cfg)])(cfg, resume=resume, progress=progress, overwrite=overwrite)


def train_in_one_folder(cfg: Config, schedule: str, *, resume: bool, progress: bool, overwrite: bool
                        ) -> dict[str, float]:
    """Joins torchrun's group (when launched by it), prepares the run folder, checks a resumed config (what each
    stage reads), builds both splits, records the config, then trains with the joint or the alternating schedule."""
    from detkit.recipes import common
    from detkit.recipes.alternating import STAGE_READS

    reads = STAGE_READS if schedule == "alternating" else common.ONE_FOLDER_READS
    device, resume, overwrite = common.join_process_group(cfg, resume, overwrite)
    changes = common.check_resume(cfg, reads, resume)  # before anything is written (stores, config.yaml)
    device = setup(cfg) if device is None else device
    train_set, test_set = common.build_train_and_test(cfg, progress=progress)
    changes.update(common.check_resume(cfg, reads, resume, only=run_dir.FILLED_FROM_DATA))
    common.record_resume(cfg, reads, changes)
    if schedule == "alternating":
        from detkit.recipes.alternating import train_alternating

        model, summary = train_alternating(cfg, train_set, device, resume=resume, progress=progress)
        return common.report_trained(cfg, model, summary, test_set, device, progress)
    from detkit.recipes.joint import train_joint

    return train_joint(cfg, train_set, test_set, device, resume=resume, progress=progress)
