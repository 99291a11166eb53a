"""Predict and evaluate over a test loader: detections of every image, COCO metrics (and VOC AP), and, for a detector
with an RPN, the recall of the proposals of the same pass (rpn/AR@100/300/1000); sharded over ranks under torchrun.

Boxes are x1, y1, x2, y2 float32 in input pixels (the pixels of the dataset's stored image).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from detkit.progress import progress_bar

from detkit import ranks
from detkit.data.loader import build_test_loader
from detkit.evaluation.coco import detections_to_coco, evaluate_coco
from detkit.evaluation.recall import rpn_recall_metrics
from detkit.evaluation.voc import evaluate_voc
from detkit.visualize import draw_detections, draw_grid, save_image

RPN_PROPOSALS = "rpn_proposals"  # key of an image's RPN proposals in predict()'s outputs (popped by score())


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


def proposal_kwargs(model: nn.Module, targets: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """``proposals=`` for a detector without a proposal generator, from the targets' store proposals."""
    if not getattr(model, "needs_proposals", False):
        return {}
    return {"proposals": [t["proposals"].to(device) for t in targets]}


@torch.no_grad()
def predict(model: nn.Module, loader: Any, device: torch.device, desc: str = "infer",
            progress: bool = True) -> tuple[list[dict], float]:
    """Detections for every batch of a test loader (on the CPU) and the images per second; for a model with an
    RPN each image's dict also holds RPN_PROPOSALS, its proposals (P, 4) in input pixels, from the same forward.
    progress=False hides the progress bar (tools' --no-progress)."""
    model.eval()
    outputs: list[dict] = []
    count, start = 0, time.perf_counter()
    for images, targets in progress_bar(loader, desc=desc, leave=False, disable=not progress):
        inputs, kwargs = [im.to(device) for im in images], proposal_kwargs(model, targets, device)
        if hasattr(model, "detect_with_proposals"):  # a detkit detector: RPN proposals of the same pass too
            detections, rpn_proposals = model.detect_with_proposals(inputs, **kwargs)
        else:  # any module with torchvision's calling contract
            detections, rpn_proposals = model(inputs, **kwargs), None
        for i, out in enumerate(detections):
            out = {k: v.cpu() for k, v in out.items()}
            if rpn_proposals is not None:
                out[RPN_PROPOSALS] = rpn_proposals[i].cpu()
            outputs.append(out)
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


def evaluate_sharded(model: nn.Module, dataset: Any, device: torch.device, num_workers: int = 2,
                     voc: bool = False, progress: bool = True, batch_size: int = 1) -> tuple[dict[str, float], list[dict]]:
    """evaluate() with the images split over the ranks and the detections gathered on rank 0, which alone returns
    the metrics and results (the other ranks return empty ones); one process calls evaluate() itself."""
    if ranks.get_world_size() == 1:
        return evaluate(model, dataset, device, num_workers, voc=voc, progress=progress, batch_size=batch_size)
    shard = torch.utils.data.Subset(dataset, ranks.shard_indices(len(dataset)))
    workers = num_workers if device.type == "cuda" else 0
    outputs, img_per_s = predict(model, build_test_loader(shard, batch_size=batch_size, num_workers=workers), device,
                                 progress=progress)
    total_img_per_s = float(ranks.mean_over_ranks(torch.tensor(img_per_s, device=device))) * ranks.get_world_size()
    gathered = ranks.gather_sharded(outputs, len(dataset))
    if gathered is None:
        return {}, []
    return score(gathered, dataset, voc, total_img_per_s)
