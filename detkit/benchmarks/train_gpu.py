"""`tools/benchmark.py train-gpu`: detkit's R50-FPN and torchvision's fasterrcnn_resnet50_fpn trained on BCCD with
the recipe of ../shared/bench/tv_bccd_train.py, one after the other in one process, through one training loop.

The recipe (from that script): both from scratch, BCCD trainval -> test, images decoded once and kept on the
device, each batch `random.sample`d from the training ids with a horizontal flip of probability 0.5, SGD lr
0.02 * batch / 16, momentum 0.9, weight decay 1e-4, linear warm-up over min(200, iters / 10) iterations, 10x decay
at 75% and again at 92% of the iterations, fp16 autocast with a GradScaler on CUDA. Images are resized once, before
timing, to torchvision's default test size (shorter side 800, longer at most 1333), and both models are told that
size, so neither resizes inside its timed forward. Each side gets the same seed, batches and flips.

Printed per side and as detkit / torchvision: COCO mAP and AP50 on the test split, training img/s (all iterations,
synchronised), inference img/s at batch 1 and at batch 8 (test split, float32 weights under the same autocast),
and peak GPU memory of training (torch.cuda.max_memory_allocated; not measured on the CPU). `--smoke` runs the same
code for a few iterations on tiny images so that CI proves it on a CPU; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from detkit.atomic import write_json
from detkit.benchmarks.bccd import DEFAULT_BCCD, REPO
from detkit.errors import DetkitError

CONFIG = REPO / "configs" / "bccd" / "faster_rcnn_r50.yaml"
# torchvision's GeneralizedRCNNTransform defaults (fasterrcnn_resnet50_fpn): shorter side 800, longer <= 1333.
FULL_SIZE, FULL_MAX_SIZE = 800, 1333
SMOKE = {"iters": 2, "batch": 2, "min_size": 64, "max_size": 96, "train_images": 4, "test_images": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tools/benchmark.py train-gpu`."""
    parser.add_argument("--root", default=DEFAULT_BCCD, help="BCCD folder (Pascal VOC layout)")
    parser.add_argument("--iters", type=int, default=1500, help="training iterations per side (default 1500)")
    parser.add_argument("--batch", type=int, default=8, help="training batch (default 8, as the recipe)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few iterations on tiny images (runs on a CPU in seconds; figures mean nothing)")
    parser.add_argument("--sides", default="torchvision,detkit", help="comma-separated: torchvision, detkit")
    parser.add_argument("--json", help="also write the results to this JSON file")


def load_split(root: str, split: str, size: tuple[int, int], limit: int | None,
               device: torch.device) -> tuple[Any, list[torch.Tensor], list[dict], list[float]]:
    """BCCD `split` decoded and resized once: (dataset, images on device, targets in resized pixels, scales)."""
    from detkit.data import build_dataset

    dataset = build_dataset("voc", root, split, None, train=False)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    images, targets, scales = [], [], []
    for index in range(count):
        image, target = dataset[index]
        height, width = image.shape[-2:]
        scale = min(size[0] / min(height, width), size[1] / max(height, width))
        image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=True)[0]
        images.append(image.to(device))
        targets.append({"boxes": (target["boxes"] * scale).to(device), "labels": target["labels"].to(device)})
        scales.append(scale)
    return dataset, images, targets, scales


def build_sides(num_classes: int, size: tuple[int, int], device: torch.device) -> dict[str, Callable[[], nn.Module]]:
    """Constructors of the two models (from scratch, seeded by the caller), told the pre-resized size."""
    from detkit.config import load_config
    from detkit.modeling.build import build_detector
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    cfg = load_config(str(CONFIG), [f"input.min_size={size[0]}", f"input.max_size={size[1]}"])

    def detkit_model() -> nn.Module:
        return build_detector(cfg, num_classes=num_classes).to(device)

    def torchvision_model() -> nn.Module:
        return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                       min_size=size[0], max_size=size[1]).to(device)

    return {"torchvision": torchvision_model, "detkit": detkit_model}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device) -> Any:
    """fp16 autocast on CUDA (the recipe); float32 on the CPU (smoke runs)."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


def train_side(model: nn.Module, images: list[torch.Tensor], targets: list[dict], iters: int, batch: int,
               device: torch.device) -> dict[str, float]:
    """The recipe's training loop; returns training img/s, peak memory (MiB, CUDA only) and the last loss."""
    random.seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02 * batch / 16, momentum=0.9, weight_decay=1e-4)
    warm = max(1, min(200, iters // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: min(1.0, (it + 1) / warm)
                                                  * (0.1 if it >= 0.75 * iters else 1.0)
                                                  * (0.1 if it >= 0.92 * iters else 1.0))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ids = list(range(len(images)))
    model.train()
    _sync(device)
    start, loss = time.perf_counter(), torch.zeros(())
    for _ in range(iters):
        batch_images, batch_targets = [], []
        for i in random.sample(ids, min(batch, len(ids))):
            image, target = images[i], dict(targets[i])
            if random.random() < 0.5:
                width = image.shape[-1]
                image = image.flip(-1)
                boxes = target["boxes"].clone()
                boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
                target["boxes"] = boxes
            batch_images.append(image)
            batch_targets.append(target)
        with _autocast(device):
            loss = sum(model(batch_images, batch_targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"train/img_per_s": iters * min(batch, len(ids)) / seconds, "train/peak_mem_mib": peak,
            "final_loss": float(loss.detach())}


@torch.no_grad()
def infer_side(model: nn.Module, images: list[torch.Tensor], batch: int, device: torch.device) -> tuple[float, list]:
    """Inference img/s over the test images at `batch` images per call, and the detections (on the CPU)."""
    model.eval()
    outputs: list[dict] = []
    _sync(device)
    start = time.perf_counter()
    for k in range(0, len(images), batch):
        with _autocast(device):
            outputs.extend(model(images[k:k + batch]))
    _sync(device)
    ips = len(images) / max(time.perf_counter() - start, 1e-9)
    return ips, [{key: value.float().cpu() if value.is_floating_point() else value.cpu()
                  for key, value in out.items()} for out in outputs]


def coco_metrics(dataset: Any, outputs: list[dict], scales: list[float]) -> dict[str, float]:
    """COCO mAP and AP50 of detections made on resized images (boxes scaled back) on the first len(outputs) images."""
    from detkit.evaluation.coco import detections_to_coco, evaluate_coco

    outputs = [{**out, "boxes": out["boxes"] / scale} for out, scale in zip(outputs, scales)]
    image_ids = dataset.image_ids[:len(outputs)]
    results = detections_to_coco(outputs, image_ids, dataset.label_to_category_id)
    gt = dataset.coco_gt()
    keep = set(image_ids)
    gt = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
          "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    metrics = evaluate_coco(gt, results)
    return {"bbox/AP": metrics["bbox/AP"], "bbox/AP50": metrics["bbox/AP50"]}


def run_side(name: str, build: Callable[[], nn.Module], train: tuple, test: tuple, args: argparse.Namespace,
             device: torch.device) -> dict[str, float]:
    """Train, time inference at batch 1 and 8, and evaluate one side."""
    torch.manual_seed(0)
    model = build()
    result = train_side(model, train[1], train[2], args.iters, args.batch, device)
    result["infer/img_per_s_b1"], outputs = infer_side(model, test[1], 1, device)
    result["infer/img_per_s_b8"], _ = infer_side(model, test[1], 8, device)
    result.update(coco_metrics(test[0], outputs, test[3]))
    print(f"{name}: {json.dumps(result)}", flush=True)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Rows per metric: each side and detkit / torchvision."""
    keys = ["bbox/AP", "bbox/AP50", "train/img_per_s", "infer/img_per_s_b1", "infer/img_per_s_b8",
            "train/peak_mem_mib"]
    names = list(results)
    lines = [f"{'metric':<22}" + "".join(f"{n:>14}" for n in names) + ("         ratio" if len(names) == 2 else "")]
    for key in keys:
        row = f"{key:<22}" + "".join(f"{results[n][key]:>14.4g}" for n in names)
        if {"detkit", "torchvision"} <= set(names):
            theirs = results["torchvision"][key]
            ratio = results["detkit"][key] / theirs if theirs else float("nan")
            row += f"{ratio:>13.3f}x"
        lines.append(row)
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run the chosen sides and print the table."""
    if args.smoke:
        args.iters, args.batch = SMOKE["iters"], SMOKE["batch"]
    if args.iters < 1 or args.batch < 1:
        raise DetkitError(f"benchmark train-gpu: --iters and --batch must be >= 1, got {args.iters}, {args.batch}.")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not sides or set(sides) - {"torchvision", "detkit"}:
        raise DetkitError(f"benchmark train-gpu: --sides takes torchvision and/or detkit, got {args.sides!r}.")
    if not (Path(args.root) / "Annotations").is_dir():
        raise DetkitError(f"benchmark train-gpu: {args.root} is not a BCCD folder (no Annotations/); pass --root.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        raise DetkitError("benchmark train-gpu needs a CUDA device; on a CPU run it with --smoke.")
    size = (SMOKE["min_size"], SMOKE["max_size"]) if args.smoke else (FULL_SIZE, FULL_MAX_SIZE)
    limits = (SMOKE["train_images"], SMOKE["test_images"]) if args.smoke else (None, None)
    train = load_split(args.root, "trainval", size, limits[0], device)
    test = load_split(args.root, "test", size, limits[1], device)
    builders = build_sides(len(train[0].classes), size, device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    print(f"# BCCD, {args.iters} iterations at batch {args.batch}, size {size}, {where}, torch {torch.__version__}")
    results = {name: run_side(name, builders[name], train, test, args, device) for name in sides}
    print(format_table(results))
    if args.json:
        write_json(args.json, {"args": {k: v for k, v in vars(args).items() if k != "func"}, "results": results},
                   default=str)
    return 0
