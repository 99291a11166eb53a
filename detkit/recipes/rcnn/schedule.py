"""R-CNN's training schedule (Girshick et al. 2014, §2.3): proposals -> fine-tuning -> features -> SVMs -> box
regression, each a detkit.engine.stages Stage in its own folder under output_dir (skipped when done, resumed inside
its folder when stopped: the Trainer from last.pth, the feature cache per image, the SVMs per class), then one
model_final.pth holding the CNN, the SVMs and the regressors, evaluated on data.test with and without regression.
Under torchrun every rank runs every stage, each sharing the stage's work (train_rcnn).

Reads config keys (a recipe: the edge where a config becomes arguments).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.atomic import write_json
from detkit.config import Config, config_to_dict
from detkit.edge import setup
from detkit.engine import distributed, run_dir
from detkit.engine.checkpoint import atomic_torch_save, class_meta, load_model_weights
from detkit.engine.stages import Stage, run_stages, stop_with_message
from detkit.evaluation.coco import format_coco_table
from detkit.evaluation.predict import evaluate_sharded, save_detection_picture
from detkit.modeling.build import build_model, prepare_for_test
from detkit.recipes import common
from detkit.recipes.rcnn.features import FeatureCache, cache_features
from detkit.recipes.rcnn.fitting import append_jsonl, run_bbox_stage, run_svm_stage
from detkit.recipes.rcnn.svm import SVMSettings

STAGES = ("1_proposals", "2_finetune", "3_features", "4_svms", "5_bbox_reg")
_FITTING = ("model.rcnn.feature_norm", "model.rcnn.svm_C", "model.rcnn.svm_bias_scale", "model.rcnn.svm_pos_weight",
            "model.rcnn.svm_neg_iou", "model.rcnn.svm_rounds", "model.rcnn.svm_init_negatives",
            "model.rcnn.svm_cache_size", "model.rcnn.reg_alpha", "model.rcnn.reg_iou", "model.rcnn.features_per_image")
_SVM = tuple(k for k in _FITTING if k.startswith("model.rcnn.svm_")) + ("model.rcnn.feature_norm",)
_SKIPS = common.TRAINER_SKIPS + common.TEST_TIME
# The keys each stage reads, for the resume check (detkit.engine.run_dir.check_resume). The fine-tuned CNN reads the
# model but not the keys of the later fits; a feature cache or SVMs half made with other values cannot continue.
STAGE_READS = (
    run_dir.StageReads(STAGES[0], ("data.root", "data.train", "proposals")),
    run_dir.StageReads(STAGES[1], (*common.TRAINER_READS, "proposals"), _SKIPS + _FITTING, after=(STAGES[0],)),
    run_dir.StageReads(STAGES[2], ("data.root", "data.train", "proposals", "model"),
                       _SKIPS + tuple(k for k in _FITTING if k != "model.rcnn.features_per_image"), continues=False,
                       after=(STAGES[1],)),
    run_dir.StageReads(STAGES[3], ("seed", "model.class_names", *_SVM), continues=False, after=(STAGES[2],)),
    run_dir.StageReads(STAGES[4], ("model.class_names", "model.rcnn.reg_alpha", "model.rcnn.reg_iou",
                                   "model.rcnn.feature_norm"), continues=False, after=(STAGES[2],)),
)


def rcnn_stages(cfg: Config, train_set: Any, test_set: Any, device: torch.device, progress: bool = True) -> list[Stage]:
    """The five stages of R-CNN training for a config whose class list is filled."""
    out = Path(cfg.output_dir)
    num_classes = len(cfg.model.class_names)
    r = cfg.model.rcnn

    def finetuned() -> nn.Module:
        model = build_model(cfg, num_classes=num_classes, init_weights=False)
        load_model_weights(out / STAGES[1] / "model_final.pth", model)
        return model.to(device).eval()

    def proposals(folder: Path, resume: bool) -> dict[str, Any]:
        counts = [len(train_set.proposals.load(rec.image_id)) for rec in train_set.records]
        metrics = {"proposals/train_images": len(counts), "proposals/mean_per_image": sum(counts) / max(len(counts), 1)}
        _log(folder, metrics)
        return metrics

    def features(folder: Path, resume: bool) -> dict[str, Any]:
        plain = copy.copy(train_set)
        plain.transforms = None  # features of the regions as stored (no flip, no jitter)
        start = time.perf_counter()
        metrics = cache_features(finetuned(), plain, FeatureCache(folder / "cache"), device,
                                 max_proposals=r.features_per_image, progress=progress)
        metrics["features/seconds"] = time.perf_counter() - start
        _log(folder, metrics)
        return metrics

    def svms(folder: Path, resume: bool) -> dict[str, Any]:
        settings = SVMSettings(C=r.svm_C, bias_scale=r.svm_bias_scale, pos_weight=r.svm_pos_weight,
                               max_rounds=r.svm_rounds, init_negatives=r.svm_init_negatives,
                               cache_size=r.svm_cache_size, seed=cfg.seed)
        return run_svm_stage(FeatureCache(out / STAGES[2] / "cache"), _image_ids(train_set), num_classes, settings,
                             neg_iou=r.svm_neg_iou, feature_norm=r.feature_norm, folder=folder, progress=progress)

    def bbox(folder: Path, resume: bool) -> dict[str, Any]:
        coder = build_model(cfg, num_classes=num_classes).roi_heads.box_coder
        return run_bbox_stage(FeatureCache(out / STAGES[2] / "cache"), _image_ids(train_set), num_classes, coder,
                              reg_iou=r.reg_iou, alpha=r.reg_alpha, feature_norm=r.feature_norm, folder=folder)

    def finetune(folder: Path, resume: bool) -> dict[str, Any]:
        return finetune_stage(cfg, train_set, test_set, device, folder, resume, progress)

    runs = (proposals, finetune, features, svms, bbox)
    keeps = (None, "last.pth of fine-tuning", "the features of the images cached so far",
             "the SVMs of the classes fitted so far", "the box regressors of the classes fitted so far")
    return [Stage(name, _timed(run), kept) for name, run, kept in zip(STAGES, runs, keeps)]


def _timed(run: Any) -> Any:
    def timed(folder: Path, resume: bool) -> dict[str, Any]:
        start = time.perf_counter()
        metrics = run(folder, resume)
        return {**metrics, "seconds": time.perf_counter() - start}
    return timed


def _log(folder: Path, metrics: dict[str, Any]) -> None:
    """Appends a stage's metrics to its metrics.jsonl (rank 0: the other ranks hold the same figures or a share)."""
    if distributed.is_main_process():
        append_jsonl(folder, metrics)


def _image_ids(dataset: Any) -> list[int]:
    return [rec.image_id for rec in dataset.records]


def finetune_stage(cfg: Config, train_set: Any, test_set: Any, device: torch.device, folder: Path, resume: bool,
                   progress: bool) -> dict[str, Any]:
    """Fine-tunes the CNN as a K + 1-way classifier of warped windows with the ordinary Trainer (under torchrun one
    DDP run, each rank its slice of the global batch); held-out accuracy (rank 0 alone measures it; the other ranks
    return the training speed only)."""
    fresh = not (resume and (folder / "last.pth").is_file())  # a resumed stage loads last.pth, fetches nothing
    model = build_model(cfg, num_classes=len(cfg.model.class_names), init_weights=fresh)
    trainer = common.make_trainer(cfg, model, train_set, device, folder, progress=progress)
    summary = trainer.train(resume=resume)
    metrics = {"train/img_per_s": summary.get("train/img_per_s", float("nan"))}
    if distributed.is_main_process():
        metrics.update(window_accuracy(model, test_set, device))
    _log(folder, metrics)
    return metrics


@torch.no_grad()
def window_accuracy(model: nn.Module, dataset: Any, device: torch.device, max_images: int = 50) -> dict[str, float]:
    """Accuracy of the fine-tuned softmax on sampled windows (IoU >= 0.5 foreground) of the first test images."""
    model.eval()
    correct = total = fg_correct = fg_total = 0
    with torch.random.fork_rng():  # the same windows every time, the caller's random stream untouched
        torch.manual_seed(0)
        for i in range(min(max_images, len(dataset))):
            image, target = dataset[i]
            target = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in target.items()}
            logits, labels = model.sampled_region_logits([image.to(device)], [target])
            predicted, fg = logits.argmax(dim=1), labels > 0
            correct, total = correct + int((predicted == labels).sum()), total + labels.numel()
            fg_correct, fg_total = fg_correct + int((predicted[fg] == labels[fg]).sum()), fg_total + int(fg.sum())
    return {"finetune/window_accuracy": correct / max(total, 1),
            "finetune/fg_window_accuracy": fg_correct / max(fg_total, 1)}


def assemble_model(cfg: Config, device: torch.device) -> nn.Module:
    """The fine-tuned CNN with the fitted SVMs and box regressors installed (eval mode)."""
    import numpy as np

    out = Path(cfg.output_dir)
    model = build_model(cfg, num_classes=len(cfg.model.class_names), init_weights=False)
    load_model_weights(out / STAGES[1] / "model_final.pth", model)
    predictor = model.roi_heads.box_predictor
    with np.load(out / STAGES[3] / "svms.npz") as svm:
        predictor.set_svms(torch.from_numpy(svm["weight"]).float(), torch.from_numpy(svm["bias"]).float(),
                           float(svm["scale"]))
    with np.load(out / STAGES[4] / "regressors.npz") as reg:
        predictor.set_regressors(torch.from_numpy(reg["weight"]), torch.from_numpy(reg["bias"]), float(reg["scale"]))
    return model.to(device).eval()


def clear_stages(output_dir: str | Path) -> None:
    """Deletes the stage folders of an earlier run (--overwrite starts over: no stage may count as done)."""
    import shutil

    for name in STAGES:
        shutil.rmtree(Path(output_dir) / name, ignore_errors=True)


def train_rcnn(cfg: Config, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Runs every R-CNN stage, writes model_final.pth, metrics.json and detections.png; returns the metrics.

    Under torchrun every rank runs every stage (detkit.engine.stages): fine-tuning is one DDP run, the feature cache,
    the SVMs and the regressors are shared among the ranks (by image, by class), the evaluation is sharded; rank 0
    alone prepares the folder, records the config and writes model_final.pth, metrics.json, the pictures and the
    report (the other ranks return {}). After an elastic restart the group resumes inside its stage.
    """
    device, resume, overwrite = common.join_process_group(cfg, resume, overwrite)
    if overwrite:
        if distributed.is_main_process():
            clear_stages(cfg.output_dir)
        distributed.barrier()  # no rank looks at a stage folder before rank 0 cleared them
    changes = common.check_resume(cfg, STAGE_READS, resume)  # before anything is written (stores, config.yaml)
    device = setup(cfg) if device is None else device
    start = time.perf_counter()
    with stop_with_message("filling the proposal stores", "the proposals of the images done are kept in the stores"):
        train_set, test_set = common.build_train_and_test(cfg, progress=progress)  # fills the proposal stores
    proposal_seconds = time.perf_counter() - start
    changes.update(common.check_resume(cfg, STAGE_READS, resume, only=run_dir.FILLED_FROM_DATA))
    common.record_resume(cfg, STAGE_READS, changes)
    stage_metrics = run_stages(rcnn_stages(cfg, train_set, test_set, device, progress), cfg.output_dir, resume=resume)
    stage_metrics[STAGES[0]]["store_seconds"] = proposal_seconds
    model = assemble_model(cfg, device)
    out = Path(cfg.output_dir)
    main = distributed.is_main_process()
    if main:
        atomic_torch_save({"model": {k: v.cpu() for k, v in model.state_dict().items()},
                           "meta": class_meta(config_to_dict(cfg))}, out / "model_final.pth")
    prepare_for_test(model, cfg)  # test-time options (SVD of fc6/fc7) after model_final.pth is written
    voc = cfg.data.test.format == "voc"
    metrics, results = evaluate_sharded(model, test_set, device, cfg.data.num_workers, voc=voc, progress=progress)
    model.roi_heads.box_predictor.use_regression.fill_(False)
    plain, _ = evaluate_sharded(model, test_set, device, cfg.data.num_workers, voc=voc, progress=progress)
    model.roi_heads.box_predictor.use_regression.fill_(True)
    if not main:
        return {}
    metrics.update({f"no_bbox_reg/{k}": v for k, v in plain.items()})
    for name, figures in stage_metrics.items():
        metrics.update({f"{name}/{k}": v for k, v in figures.items()})
    write_json(out / "metrics.json", metrics)
    write_json(out / "detections_test.json", results)
    save_detection_picture(model, test_set, device, out / "detections.png", cfg.model.class_names)
    print(format_coco_table(metrics))
    print(f"wrote {cfg.output_dir}/metrics.json, model_final.pth and detections.png")
    from detkit.report.run import report_run

    report_run(cfg, test_set, results, metrics, out, run_dir=out)  # report.html (test.report)
    return metrics
