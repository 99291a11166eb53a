"""Training recipes: what tools/train.py runs, one module per recipe, above the engine (loop, solver, checkpoints).

RECIPES (detkit.registries.RECIPES, re-exported) maps a config to its recipe: model.arch=rcnn trains with R-CNN's
stages (detkit.recipes.rcnn) whatever train.schedule says; otherwise train.schedule picks joint / exact_joint
(detkit.recipes.joint) or alternating (detkit.recipes.alternating). A recipe is
``run(cfg, resume=, progress=, overwrite=) -> metrics`` and declares the train.* keys it reads; adding one is one
module plus one line in registries.RECIPES (docs/architecture.md).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detkit.config import Config, config_to_dict, save_config
from detkit.config_checks import ensure_checked, recipe_name
from detkit.edge import setup
from detkit.engine import distributed, run_dir
from detkit.errors import DetkitError
from detkit.registries import ARCHS, RECIPES, resolve


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


# The recipes torchrun may run on several ranks.
MULTI_PROCESS = {"joint", "exact_joint"}


def train(cfg: Config, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, float]:
    """Trains the config's detector with its recipe, evaluates it on data.test and writes metrics.json; returns the
    metrics. A folder holding a run needs `resume` or `overwrite`; a resume that changes the model is refused before
    anything is written, other changes are warned about and recorded (detkit.engine.run_dir). A Config built in
    Python (not by load_config) has its keys checked here, before any slow step."""
    ensure_checked(cfg)
    name = recipe_name(cfg)
    if name not in MULTI_PROCESS and distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        where = f"model.arch={name}" if name in ARCHS else f"train.schedule={name}"
        raise DetkitError(f"{where} trains in one process; start it without torchrun (or with one process)")
    return resolve(RECIPES[name])(cfg, resume=resume, progress=progress, overwrite=overwrite)


def train_in_one_folder(cfg: Config, schedule: str, *, resume: bool, progress: bool, overwrite: bool
                        ) -> dict[str, float]:
    """Joins torchrun's group (when launched by it), prepares the run folder, builds both splits, records the config,
    then trains with the joint or the alternating schedule."""
    from detkit.recipes.common import build_train_and_test, join_process_group, report_trained

    device, resume, overwrite = join_process_group(cfg, resume, overwrite)
    device = setup(cfg) if device is None else device
    train_set, test_set = build_train_and_test(cfg, progress=progress)
    if distributed.is_main_process():
        changes = run_dir.check_resume_config(cfg.output_dir, config_to_dict(cfg)) if resume else {}
        run_dir.record_config_changes(cfg.output_dir, changes)
        save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    if schedule == "alternating":
        from detkit.recipes.alternating import train_alternating

        model, summary = train_alternating(cfg, train_set, device, resume=resume, progress=progress)
        return report_trained(cfg, model, summary, test_set, device, progress)
    from detkit.recipes.joint import train_joint

    return train_joint(cfg, train_set, test_set, device, resume=resume, progress=progress)
