"""What the command-line tools do, as library calls: build from a config, train, evaluate, predict.

The only module besides detkit.modeling.build that reads config keys (the edge where a config becomes arguments).
"""
from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from detkit.config import Config, config_to_dict, save_config
from detkit.data import build_dataset
from detkit.data.classes import ClassList, apply_class_list, trained_class_list, training_class_list
from detkit.data.image_io import set_max_image_pixels
from detkit.data.loader import build_test_loader, build_train_loader
from detkit.data.transforms import build_transforms
from detkit.engine import distributed, run_dir
from detkit.engine.checkpoint import load_model_weights, read_class_meta
from detkit.engine.inference import with_test_amp
from detkit.engine.proposal_recorder import ProposalRecorder
from detkit.engine.solver import build_lr_scheduler, build_optimizer
from detkit.engine.trainer import Trainer
from detkit.errors import DetkitError
from detkit.evaluation.coco import detections_to_coco, evaluate_coco, format_coco_table
from detkit.evaluation.recall import rpn_recall_metrics
from detkit.evaluation.voc import evaluate_voc
from detkit.modeling.build import build_model, check_keys_apply, needs_proposals, prepare_for_test
from detkit import ops
from detkit.visualize import draw_detections, draw_grid, save_image

RPN_PROPOSALS = "rpn_proposals"  # key of an image's RPN proposals in predict()'s outputs (popped by score())


def setup(cfg: Config, make_output_dir: bool = True) -> torch.device:
    """Checks the config's keys apply to its arch, then seeds, threads, ops backend (and output folder) for a run;
    returns the device to use."""
    check_keys_apply(cfg)  # before any slow step (proposals, training) runs
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ops.set_backend(cfg.ops.backend)
    set_max_image_pixels(cfg.data.max_image_pixels)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise DetkitError("config key 'device' is 'cuda' but no CUDA device is available (use device=auto or cpu)")
    if make_output_dir:
        run_dir.make_output_dir(cfg.output_dir)
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def load_trained(cfg: Config, weights: str | Path) -> nn.Module:
    """The config's detector with weights from a model_final.pth or a training checkpoint, in eval mode.

    Fills cfg.model.class_names and category_ids with the class list stored with the weights (which the config's
    own, when set, must equal), so the recipe plus the weights file are enough.
    """
    m = cfg.model
    stored = ClassList.from_meta(read_class_meta(weights))
    classes = trained_class_list(m.class_names, m.category_ids, m.num_classes, stored, str(weights))
    m.class_names, m.category_ids = list(classes.names), list(classes.category_ids)
    model = build_detector(cfg, num_classes=len(classes))
    load_model_weights(weights, model)
    return prepare_for_test(model, cfg).eval()


def class_list(cfg: Config) -> ClassList:
    """The run's class list from a config whose model.class_names is filled (by training or load_trained)."""
    if not cfg.model.class_names:
        raise DetkitError("the config names no classes (model.class_names); use the config.yaml a training run wrote")
    return ClassList.make(cfg.model.class_names, cfg.model.category_ids)


def save_detection_picture(model: nn.Module, dataset: Any, device: torch.device, path: Path,
                           class_names: list[str], count: int = 8, score_thresh: float = 0.5) -> Path:
    """Draws the model's detections on the first images of a dataset, tiled into one picture."""
    model.eval()
    tiles = []
    with torch.no_grad():
        for i in range(min(count, len(dataset))):
            image, target = dataset[i]
            det = model([image.to(device)], **proposal_kwargs(model, [target], device))[0]
            zoom = max(1, 384 // max(image.shape[-2:]))  # small images are enlarged so captions stay legible
            image = torch.nn.functional.interpolate(image[None], scale_factor=zoom, mode="nearest")[0]
            tiles.append(draw_detections(image, det["boxes"].cpu() * zoom, det["labels"], det["scores"],
                                         class_names, score_thresh=score_thresh))
    save_image(draw_grid(tiles, nrow=4), path)
    return path


def build_split(cfg: Config, split: str, classes: ClassList | None = None, progress: bool = True) -> Any:
    """The train or test dataset of a config (training augmentation on the train split only), its labels
    renumbered to the class list when one is given; with a proposal store (data.<split>.proposals), its proposals
    too, computed first when the store is missing or incomplete."""
    d = getattr(cfg.data, split)
    train = split == "train"
    transforms = build_transforms(train=True, flip_prob=cfg.input.flip_prob,
                                  color_jitter=cfg.input.color_jitter) if train else None
    dataset = build_dataset(d.format, d.root, d.split, d.ann_file, train=train, transforms=transforms,
                            skip_corrupt=cfg.data.skip_corrupt, demo_cache=cfg.data.demo_cache)
    if classes is not None:
        apply_class_list(dataset, classes, cfg.data.unknown_classes, where=f"data.{split}")
    if needs_proposals(cfg.model.arch) and not d.proposals:
        raise DetkitError(f"model.arch={cfg.model.arch} reads proposals from a store: set data.{split}.proposals "
                          "(a folder; tools/propose.py fills it)")
    if d.proposals:
        from detkit.data.proposals import ProposalStore

        dataset.proposals = ProposalStore(ensure_proposals(cfg, split, progress=progress))
    return dataset


def build_train_and_test(cfg: Config, progress: bool = True) -> tuple[Any, Any]:
    """Both splits of a training run under one class list (the config's, else the training set's), written
    into cfg.model.class_names / category_ids; a class or class count that does not fit is a DetkitError."""
    m = cfg.model
    train_set = build_split(cfg, "train", progress=progress)
    classes = training_class_list(m.class_names, m.category_ids, m.num_classes, train_set)
    apply_class_list(train_set, classes, cfg.data.unknown_classes, where="data.train")
    m.class_names, m.category_ids = list(classes.names), list(classes.category_ids)
    return train_set, build_split(cfg, "test", classes, progress=progress)


def proposal_kwargs(model: nn.Module, targets: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """``proposals=`` for a detector without a proposal generator, from the targets' store proposals."""
    if not getattr(model, "needs_proposals", False):
        return {}
    return {"proposals": [t["proposals"].to(device) for t in targets]}


def propose(cfg: Config, image: np.ndarray) -> torch.Tensor:
    """Selective-search proposals (P, 4) float32 for one HWC uint8 RGB image, with the config's proposals.* keys."""
    from detkit.data.proposals import propose_image

    p = cfg.proposals
    return torch.from_numpy(propose_image(image, mode=p.mode, max_side=p.max_side, min_size=p.min_size,
                                          top_k=p.top_k))


@torch.no_grad()
def predict(model: nn.Module, loader: Any, device: torch.device, desc: str = "infer",
            progress: bool = True) -> tuple[list[dict], float]:
    """Detections for every batch of a test loader (on the CPU) and the images per second; for a model with an
    RPN each image's dict also holds RPN_PROPOSALS, its proposals (P, 4) in input pixels, from the same forward.
    progress=False hides the progress bar (tools' --no-progress)."""
    model.eval()
    outputs: list[dict] = []
    count, start = 0, time.perf_counter()
    with ProposalRecorder(model) as recorder:
        for images, targets in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
            for out in model([im.to(device) for im in images], **proposal_kwargs(model, targets, device)):
                outputs.append({k: v.cpu() for k, v in out.items()})
            for out, proposals in zip(outputs[len(outputs) - len(images):], recorder.take()):
                out[RPN_PROPOSALS] = proposals
            count += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return outputs, count / max(time.perf_counter() - start, 1e-9)


def evaluate(model: nn.Module, dataset: Any, device: torch.device, num_workers: int = 2,
             voc: bool = False, progress: bool = True, batch_size: int = 1) -> tuple[dict[str, float], list[dict]]:
    """COCO metrics (and VOC AP with voc=True) of a model on a dataset, and its COCO-format results."""
    # On the CPU, loader workers would compete with the model for the same cores: decode in-process.
    workers = num_workers if device.type == "cuda" else 0
    outputs, img_per_s = predict(model, build_test_loader(dataset, batch_size=batch_size, num_workers=workers), device,
                                 progress=progress)
    return score(outputs, dataset, voc, img_per_s)


def score(outputs: list[dict], dataset: Any, voc: bool, img_per_s: float) -> tuple[dict[str, float], list[dict]]:
    """COCO metrics (and VOC AP) of detections, one per dataset image in order, and their COCO-format results;
    with RPN proposals in the outputs (predict), their recall too: rpn/AR@100, rpn/AR@300, rpn/AR@1000."""
    rpn = [out.pop(RPN_PROPOSALS) for out in outputs] if outputs and RPN_PROPOSALS in outputs[0] else None
    results = detections_to_coco(outputs, dataset.image_ids, dataset.label_to_category_id)
    metrics = evaluate_coco(dataset.coco_gt(), results)  # per-class AP named by the ground truth's ids
    if voc:
        targets = [dataset.target(i) for i in range(len(dataset))]
        voc_metrics = evaluate_voc(outputs, targets, num_classes=len(dataset.classes), class_names=dataset.classes)
        metrics.update(voc_metrics)
    if rpn is not None:
        metrics.update(rpn_recall(rpn, dataset))
    metrics["infer/img_per_s"] = img_per_s
    return metrics, results


def rpn_recall(proposals: list[torch.Tensor], dataset: Any) -> dict[str, float]:
    """rpn/AR@100/300/1000 (IoU 0.50:0.95, as recall.json of tools/propose.py) of one proposal set per dataset image
    (input pixels), against its ground truth less the ignored (difficult / crowd) boxes. AR@1000 is bounded by the
    RPN's model.rpn.post_nms_top_n_test (1000 by default): the RPN keeps no more proposals than that."""
    gt_boxes = []
    for i in range(len(dataset)):
        target = dataset.target(i)
        gt_boxes.append(target["boxes"][~target["ignore"]])
    return rpn_recall_metrics(proposals, gt_boxes)


def train(cfg: Config, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, float]:
    """Trains the config's detector, evaluates it on data.test and writes metrics.json; returns the metrics.

    A folder holding a run needs `resume` or `overwrite`; a resume that changes the model is refused before anything
    is written, other changes are warned about and recorded (detkit.engine.run_dir).
    """
    multi_stage = "model.arch=rcnn" if cfg.model.arch == "rcnn" else (
        "train.schedule=alternating" if cfg.train.schedule == "alternating" else None)
    if multi_stage and distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        raise DetkitError(f"{multi_stage} trains in one process; start it without torchrun (or with one process)")
    if cfg.model.arch == "rcnn":  # a schedule of non-SGD stages around one fine-tuning run (one process)
        from detkit.engine.rcnn_schedule import train_rcnn
        return train_rcnn(cfg, resume=resume, progress=progress, overwrite=overwrite)
    device, resume, overwrite = join_process_group(cfg, resume, overwrite)
    device = setup(cfg) if device is None else device
    train_set, test_set = build_train_and_test(cfg, progress=progress)
    if distributed.is_main_process():
        changes = run_dir.check_resume_config(cfg.output_dir, config_to_dict(cfg)) if resume else {}
        run_dir.record_config_changes(cfg.output_dir, changes)
        save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    if cfg.train.schedule == "alternating":  # a multi-stage schedule (joint and exact_joint train below)
        from detkit.engine.schedules import train_alternating

        model, summary = train_alternating(cfg, train_set, device, resume=resume, progress=progress)
        return report_trained(cfg, model, summary, test_set, device, progress)
    model = build_detector(cfg, num_classes=len(cfg.model.class_names))
    def eval_fn(m: nn.Module) -> dict:
        return evaluate_sharded(with_test_amp(m, cfg.test.amp, device), test_set, device, cfg.data.num_workers,
                                progress=progress, batch_size=cfg.test.batch_size)[0]

    trainer = make_trainer(cfg, model, train_set, device, cfg.output_dir, progress=progress,
                           eval_fn=eval_fn if cfg.train.eval_period else None)
    summary = trainer.train(resume=resume)
    return report_trained(cfg, model, summary, test_set, device, progress)


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
    return metrics


def write_json(path: Path, data: Any) -> None:
    """Writes JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def rpn_config(cfg: Config) -> Config:
    """The Faster R-CNN config whose RPN proposes for cfg's detector (``proposals.method: rpn``): the same backbone
    and RPN keys; R-CNN's own keys (``model.rcnn.*``) go back to their defaults and no longer count as set by the
    user, so the key check of the Faster R-CNN build does not refuse them."""
    from detkit.config_schema import RCNNConfig

    rpn_cfg = copy.deepcopy(cfg)
    rpn_cfg.model.arch = "faster_rcnn"  # the RPN of the config's backbone, whatever detector trains next
    rpn_cfg.model.rcnn = RCNNConfig()
    rpn_cfg.user_keys = frozenset(k for k in getattr(cfg, "user_keys", ()) if not k.startswith("model.rcnn."))
    return rpn_cfg


def ensure_proposals(cfg: Config, split: str, progress: bool = True) -> Path | None:
    """Fills the store data.<split>.proposals from cfg.proposals.* where images are missing; its path, or None."""

    from detkit.data.proposals import ProposalStore, propose_dataset, proposal_settings

    d = getattr(cfg.data, split)
    if not d.proposals:
        return None
    p = cfg.proposals
    store = ProposalStore(d.proposals)
    dataset = build_dataset(d.format, d.root, d.split, d.ann_file, train=split == "train",
                            skip_corrupt=cfg.data.skip_corrupt, demo_cache=cfg.data.demo_cache)
    rpn_model = None
    if p.method == "rpn":
        proposal_settings(method="rpn", rpn_weights=p.rpn_weights)  # a missing weights file fails here, first
        if not all(store.has(i) for i in dataset.image_ids):  # the model is built only when there is work
            rpn_model = build_model(rpn_config(cfg), num_classes=len(cfg.model.class_names or dataset.classes))
            load_model_weights(p.rpn_weights, rpn_model)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    propose_dataset(dataset, store, method=p.method, mode=p.mode, max_side=p.max_side, min_size=p.min_size, top_k=p.top_k,
                    workers=p.workers, rpn_model=rpn_model, rpn_weights=p.rpn_weights, device=device,
                    progress=progress)
    return store.root


def build_detector(cfg: Config, num_classes: int) -> nn.Module:
    """build_model, where model.backbone.norm sync_bn builds BatchNorm and, under a process group, converts it to
    SyncBatchNorm (the two share one state_dict, so weights load either way)."""
    backbone = cfg.model.backbone
    if backbone.norm != "sync_bn":
        return build_model(cfg, num_classes=num_classes)
    backbone.norm = "bn"
    try:
        model = build_model(cfg, num_classes=num_classes)
    finally:
        backbone.norm = "sync_bn"
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if distributed.get_world_size() > 1 else model


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


def evaluate_sharded(model: nn.Module, dataset: Any, device: torch.device, num_workers: int = 2,
                     voc: bool = False, progress: bool = True, batch_size: int = 1) -> tuple[dict[str, float], list[dict]]:
    """evaluate() with the images split over the ranks and the detections gathered on rank 0, which alone returns
    the metrics and results (the other ranks return empty ones); one process calls evaluate() itself."""
    if distributed.get_world_size() == 1:
        return evaluate(model, dataset, device, num_workers, voc=voc, progress=progress, batch_size=batch_size)
    shard = torch.utils.data.Subset(dataset, distributed.shard_indices(len(dataset)))
    workers = num_workers if device.type == "cuda" else 0
    outputs, img_per_s = predict(model, build_test_loader(shard, batch_size=batch_size, num_workers=workers), device,
                                 progress=progress)
    total_img_per_s = float(distributed.mean_over_ranks(torch.tensor(img_per_s, device=device))) * distributed.get_world_size()
    gathered = distributed.gather_sharded(outputs, len(dataset))
    if gathered is None:
        return {}, []
    return score(gathered, dataset, voc, total_img_per_s)
