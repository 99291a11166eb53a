"""What every training recipe shares: both splits under one class list, the ordinary Trainer of a config's solver,
joining torchrun's process group, the resume check of every recipe (what each stage reads), and the final report
(metrics.json, detections_test.json, detections.png).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.atomic import write_json
from detkit.config import Config, config_to_dict, save_config
from detkit.data.classes import apply_class_list, training_class_list
from detkit.data.loader import build_train_loader
from detkit.edge import build_split, setup
from detkit.engine import distributed, run_dir
from detkit.engine.solver import build_lr_scheduler, build_optimizer
from detkit.engine.trainer import Trainer
from detkit.evaluation.amp import with_test_amp
from detkit.evaluation.coco import format_coco_table
from detkit.evaluation.predict import evaluate_sharded, save_detection_picture
from detkit.modeling.build import prepare_for_test
from detkit.report.run import report_run


# What a Trainer stage reads: every key its model, data stream and schedule depend on; not where it logs or
# checkpoints, nor the test split (the final evaluation reads that). A recipe adds its own keys (proposals, train.*).
TRAINER_READS = ("seed", "data", "input", "solver", "model")
TRAINER_SKIPS = ("data.test", "data.num_workers", "data.demo_cache", "solver.checkpoint_period", "solver.log_period")
# Test-time keys: no stage's output depends on them; the final evaluation, which runs on every resume, reads them.
TEST_TIME = ("model.roi_heads.score_thresh", "model.roi_heads.nms_thresh", "model.roi_heads.detections_per_img",
             "model.roi_heads.svd_rank", "model.rpn.pre_nms_top_n_test", "model.rpn.post_nms_top_n_test",
             "model.rcnn.score_thresh", "model.rcnn.nms_thresh")
# A run trained in output_dir itself (joint, exact_joint): one Trainer reading every key but the test-time ones.
ONE_FOLDER_READS = (run_dir.StageReads(".", ("",), TEST_TIME),)


def check_resume(cfg: Config, stages: tuple[run_dir.StageReads, ...], resume: bool, *,
                 only: tuple[str, ...] | None = None) -> dict[str, tuple[Any, Any]]:
    """The resume check of every recipe (detkit.engine.run_dir.check_resume: refuses a change a finished stage read
    or a model change under saved weights, warns about the others); {} when not resuming or not rank 0. Call it
    before anything is written, then again with only=run_dir.FILLED_FROM_DATA once the class list is filled."""
    if not resume or not distributed.is_main_process():
        return {}
    return run_dir.check_resume(cfg.output_dir, config_to_dict(cfg), stages, only=only)


def record_resume(cfg: Config, stages: tuple[run_dir.StageReads, ...], changes: dict[str, tuple[Any, Any]]) -> None:
    """Once check_resume passed: append its changes to config_changes.jsonl and write config.yaml (rank 0)."""
    if distributed.is_main_process():
        run_dir.record_config_changes(cfg.output_dir, changes, stages)
        save_config(cfg, Path(cfg.output_dir) / "config.yaml")


def build_train_and_test(cfg: Config, progress: bool = True) -> tuple[Any, Any]:
    """Both splits of a training run under one class list (the config's, else the training set's), written
    into cfg.model.class_names / category_ids; a class or class count that does not fit is a DetkitError."""
    m = cfg.model
    train_set = build_split(cfg, "train", progress=progress)
    classes = training_class_list(m.class_names, m.category_ids, m.num_classes, train_set)
    apply_class_list(train_set, classes, cfg.data.unknown_classes, where="data.train")
    m.class_names, m.category_ids = list(classes.names), list(classes.category_ids)
    return train_set, build_split(cfg, "test", classes, progress=progress)


def make_trainer(cfg: Config, model: nn.Module, train_set: Any, device: torch.device, output_dir: str | Path, *,
                 max_iter: int | None = None, base_lr: float | None = None, warmup_iters: int | None = None,
                 progress: bool = True, eval_fn: Any = None) -> Trainer:
    """The ordinary Trainer of cfg.solver for a model's trainable parameters, writing to output_dir; max_iter and
    base_lr and warmup_iters override the solver's (a stage of a multi-stage schedule); under torchrun each rank loads
    its slice."""
    s = cfg.solver
    max_iter = s.max_iter if max_iter is None else max_iter
    warmup_iters = s.warmup_iters if warmup_iters is None else warmup_iters
    optimizer = build_optimizer(model, base_lr=s.base_lr if base_lr is None else base_lr, momentum=s.momentum,
                                weight_decay=s.weight_decay)
    scheduler = build_lr_scheduler(optimizer, max_iter=max_iter, warmup_iters=min(warmup_iters, max_iter),
                                   warmup_factor=s.warmup_factor, policy=s.lr_policy, gamma=s.gamma,
                                   steps=sorted({max(1, round(f * max_iter)) for f in s.steps}))

    def loader_factory(start_iter: int):
        return build_train_loader(train_set, s.batch_size, num_workers=cfg.data.num_workers, seed=cfg.seed,
                                  start_iter=start_iter, aspect_ratio_grouping=cfg.data.aspect_ratio_grouping,
                                  rank=distributed.get_rank(), world_size=distributed.get_world_size())

    return Trainer(model, optimizer, scheduler, loader_factory, max_iter=max_iter, output_dir=output_dir,
                   device=device, checkpoint_period=s.checkpoint_period, log_period=s.log_period, amp=s.amp,
                   grad_clip=s.grad_clip, eval_fn=eval_fn, eval_period=cfg.train.eval_period if eval_fn else 0,
                   config=config_to_dict(cfg), progress=progress)


def join_process_group(cfg: Config, resume: bool, overwrite: bool) -> tuple[torch.device | None, bool, bool]:
    """Under torchrun: join the group, let rank 0 alone check and lock the output folder, and after an elastic
    restart resume from last.pth (whatever --overwrite said); return (device or None when alone, resume, overwrite).

    Alone, the folder is prepared as before and the device comes from setup() afterwards.
    """
    if not distributed.launched_by_torchrun():
        run_dir.prepare_output_dir(cfg.output_dir, resume=resume, overwrite=overwrite)
        return None, resume, overwrite
    if distributed.restart_count() > 0:  # the group restarted after a lost worker: continue the run it left
        resume, overwrite = True, False
    device = distributed.init_from_env(setup(cfg, make_output_dir=False))
    if distributed.is_main_process():
        run_dir.prepare_output_dir(cfg.output_dir, resume=resume, overwrite=overwrite)
    distributed.barrier()  # the other ranks read last.pth only after rank 0 checked (and maybe cleared) the folder
    return device, resume, overwrite


def report_trained(cfg: Config, model: nn.Module, summary: dict[str, Any], test_set: Any,
                   device: torch.device, progress: bool = True) -> dict[str, float]:
    """Evaluates a trained model on data.test; writes metrics.json, detections_test.json and detections.png."""
    prepare_for_test(model, cfg)  # test-time options (SVD of fc6/fc7) after model_final.pth is written
    model = with_test_amp(model, cfg.test.amp, device)
    metrics, results = evaluate_sharded(model, test_set, device, cfg.data.num_workers,
                                        voc=cfg.data.test.format == "voc", progress=progress,
                                        batch_size=cfg.test.batch_size)
    if not distributed.is_main_process():
        return metrics
    metrics["train/img_per_s"] = summary.get("train/img_per_s", float("nan"))
    write_json(Path(cfg.output_dir) / "metrics.json", metrics)
    write_json(Path(cfg.output_dir) / "detections_test.json", results)
    save_detection_picture(model, test_set, device, Path(cfg.output_dir) / "detections.png", cfg.model.class_names)
    print(format_coco_table(metrics))
    print(f"wrote {cfg.output_dir}/metrics.json, model_final.pth and detections.png")
    report_run(cfg, test_set, results, metrics, cfg.output_dir, run_dir=cfg.output_dir)  # report.html (test.report)
    return metrics
