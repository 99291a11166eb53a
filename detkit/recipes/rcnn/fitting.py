"""R-CNN's non-SGD stages (Girshick et al. 2014, §2.3, appendix C): SVMs with hard-negative mining and box
regression, on the feature cache (detkit.recipes.rcnn.features). Each is resumable per class (folder/class_<k>.npz)
and, under torchrun, shares its classes among the ranks (detkit.recipes.rcnn.shares).

K foreground classes (labels 1..K). Boxes x1, y1, x2, y2 in stored-image pixels. Figures go to the stage folder's
metrics.jsonl (one line per mining round, written by rank 0 once every class is fitted, or per fit) and to what the
function returns (its stage_done.json).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detkit.progress import progress_bar

from detkit.atomic import atomic_write
from detkit.box_ops import box_iou
from detkit.recipes.rcnn.bbox import apply_box_regressor, fit_box_regressor, mean_box_error
from detkit.ranks import is_main_process
from detkit.recipes.rcnn.features import FeatureCache
from detkit.recipes.rcnn.shares import share_missing, wait_for
from detkit.recipes.rcnn.svm import SVMSettings, train_svm_with_hard_negatives

NO_POSITIVE_BIAS = -10.0  # an SVM for a class with no training box: scores every region as a clear negative


def append_jsonl(folder: Path, record: dict[str, Any]) -> None:
    """Appends one record to folder/metrics.jsonl."""
    with open(folder / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


class CachedNegatives:
    """A NegativePool over the feature cache: the chosen rows of each image's memory-mapped fc7, times a scale."""

    def __init__(self, fc7s: list[np.ndarray], rows: list[np.ndarray], scale: float) -> None:
        self.fc7s, self.rows, self.scale = fc7s, rows, scale
        self.offsets = np.cumsum([0] + [len(r) for r in rows])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def scores(self, weight: np.ndarray, bias: float) -> np.ndarray:
        """Scores (Q,) of every negative, one image at a time."""
        w = (weight * self.scale).astype(np.float32)
        parts = [np.asarray(f[r], dtype=np.float32) @ w + bias for f, r in zip(self.fc7s, self.rows) if len(r)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rescaled rows (len(index), D) of the given negatives."""
        image = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), self.fc7s[0].shape[1]), dtype=np.float32)
        for i in np.unique(image):
            sel = image == i
            out[sel] = self.fc7s[i][self.rows[i][index[sel] - self.offsets[i]]]
        return out * self.scale


def mean_norm_scale(arrays: list[np.ndarray], target: float, max_rows: int = 20000) -> float:
    """The factor that gives rows of the arrays (the first max_rows) a mean L2 norm of target (reference code: 20)."""
    rows, norms = 0, []
    for a in arrays:
        if rows >= max_rows:
            break
        norms.append(np.linalg.norm(np.asarray(a[: max_rows - rows], dtype=np.float32), axis=1))
        rows += len(norms[-1])
    mean = float(np.concatenate(norms).mean()) if norms else 0.0
    return target / mean if mean > 0 else 1.0


def run_svm_stage(cache: FeatureCache, image_ids: list[int], num_classes: int, settings: SVMSettings, *,
                  neg_iou: float, feature_norm: float, folder: Path, progress: bool = True) -> dict[str, Any]:
    """Fits (or reuses, per class) one SVM per class; writes folder/class_<k>.npz and folder/svms.npz.

    Under torchrun the classes not yet fitted are shared among the ranks (every W-th, detkit.recipes.rcnn.shares),
    each rank writing its classes' files atomically and waiting for the others'; rank 0 alone writes svms.npz and
    the mining rounds of the classes fitted in this call to metrics.jsonl (in class order). A class's SVM does not
    depend on which rank fits it; every rank returns the same metrics.
    """
    images = [cache.load(i) for i in image_ids]
    scale = mean_norm_scale([im.fc7[im.num_gt:] for im in images], feature_norm)
    path = lambda k: folder / f"class_{k}.npz"  # noqa: E731
    todo, mine = share_missing(range(1, num_classes + 1), lambda k: path(k).is_file(), folder)
    for k in progress_bar(mine, desc="svms", disable=not progress):
        w, b, summary = _fit_class(images, k, scale, settings, neg_iou)
        atomic_write(path(k), lambda f: np.savez(f, weight=w, bias=b, **summary))
    wait_for(todo, lambda k: path(k).is_file())
    metrics: dict[str, Any] = {"svm/feature_scale": scale, "svm/fitted_classes": len(todo)}
    weights, biases, rounds = [], [], []
    for k in range(1, num_classes + 1):
        with np.load(path(k)) as saved:
            weights.append(saved["weight"])
            biases.append(float(saved["bias"]))
            metrics[f"svm/class_{k}/rounds"] = int(saved["rounds"])
            metrics[f"svm/class_{k}/cache_sizes"] = saved["cache_sizes"].tolist()
            metrics[f"svm/class_{k}/objectives"] = saved["objectives"].tolist()
            if saved["objectives"].size:  # the SVM kept is the round with the lowest objective
                metrics[f"svm/class_{k}/chosen_round"] = int(saved["objectives"].argmin()) + 1
            if k in todo and "added" in saved:
                rounds += [{"class": k, "round": r + 1, "cache_size": int(size), "added": int(added),
                            "evicted": int(evicted), "objective": float(objective)} for r, (size, added, evicted,
                           objective) in enumerate(zip(saved["cache_sizes"], saved["added"], saved["evicted"],
                                                       saved["objectives"]))]
    if is_main_process():
        for record in rounds:
            append_jsonl(folder, record)
        atomic_write(folder / "svms.npz", lambda f: np.savez(f, weight=np.stack(weights), bias=np.array(biases),
                                                              scale=scale))
    return metrics


def _fit_class(images: list, k: int, scale: float, settings: SVMSettings, neg_iou: float
               ) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
    """One class's SVM (for rescaled features: the predictor applies the scale, svm_feature_scale), bias and its
    mining rounds (rounds, and per round cache_sizes, added, evicted, objectives)."""
    positives, fc7s, rows = [], [], []
    for im in images:
        gt = im.boxes[: im.num_gt][im.gt_labels == k]
        pos = np.flatnonzero((im.gt_labels == k) & ~im.gt_ignore)
        positives.append(np.asarray(im.fc7[pos], dtype=np.float32))
        if len(gt):
            iou = box_iou(torch.from_numpy(gt), torch.from_numpy(im.boxes)).max(dim=0).values.numpy()
            neg = np.flatnonzero(iou < neg_iou)
        else:
            neg = np.arange(len(im.boxes))
        fc7s.append(im.fc7)
        rows.append(neg)
    pos_features = np.concatenate(positives) * scale
    if len(pos_features) == 0:
        empty = {"rounds": np.array(0), "cache_sizes": np.zeros(0), "objectives": np.zeros(0),
                 "added": np.zeros(0, np.int64), "evicted": np.zeros(0, np.int64)}
        return np.zeros(images[0].fc7.shape[1]), NO_POSITIVE_BIAS, empty
    w, b, history = train_svm_with_hard_negatives(pos_features, CachedNegatives(fc7s, rows, scale), settings)
    summary = {"rounds": np.array(len(history)), "cache_sizes": np.array([h.cache_size for h in history]),
               "objectives": np.array([h.objective for h in history]),
               "added": np.array([h.added.size for h in history], np.int64),
               "evicted": np.array([h.evicted for h in history], np.int64)}
    return w, b, summary


def run_bbox_stage(cache: FeatureCache, image_ids: list[int], num_classes: int, box_coder: Any, *, reg_iou: float,
                   alpha: float, feature_norm: float, folder: Path, holdout_every: int = 10) -> dict[str, Any]:
    """Fits (or reuses, per class) class-specific ridge regressors on cached pool5 (every holdout_every-th image held
    out for the error); writes folder/class_<k>.npz and folder/regressors.npz.

    Under torchrun the classes are shared among the ranks as the SVMs' are (run_svm_stage); rank 0 alone writes
    regressors.npz and metrics.jsonl; every rank returns the same metrics.
    """
    images = [cache.load(i) for i in image_ids]
    scale = mean_norm_scale([im.pool5[im.num_gt:] for im in images], feature_norm)
    path = lambda k: folder / f"class_{k}.npz"  # noqa: E731
    todo, mine = share_missing(range(1, num_classes + 1), lambda k: path(k).is_file(), folder)
    dim = images[0].pool5.shape[1]
    for k, d in _regression_rows(images, set(mine), scale, reg_iou, holdout_every).items():
        fitted = _fit_regressor(d, dim, box_coder, alpha)
        atomic_write(path(k), lambda f: np.savez(f, **fitted))
    wait_for(todo, lambda k: path(k).is_file())
    weight, bias = np.zeros((num_classes, 4, dim), np.float32), np.zeros((num_classes, 4), np.float32)
    before, after, held_count = [], [], 0
    for k in range(1, num_classes + 1):
        with np.load(path(k)) as saved:
            weight[k - 1], bias[k - 1] = saved["weight"], saved["bias"]
            if int(saved["held"]):
                before.append(float(saved["error_before"]))
                after.append(float(saved["error_after"]))
                held_count += int(saved["held"])
    metrics = {"bbox/heldout_proposals": held_count, "bbox/feature_scale": scale,
               "bbox/heldout_error_before": sum(before) / max(held_count, 1),
               "bbox/heldout_error_after": sum(after) / max(held_count, 1)}
    if is_main_process():
        atomic_write(folder / "regressors.npz", lambda f: np.savez(f, weight=weight, bias=bias, scale=scale))
        append_jsonl(folder, metrics)
    return metrics


def _regression_rows(images: list, classes: set[int], scale: float, reg_iou: float, holdout_every: int
                     ) -> dict[int, dict[str, list]]:
    """Per class of `classes` (in order): the rescaled pool5 rows "x", proposals "p" and matched boxes "g" of the
    proposals with IoU > reg_iou to a ground-truth box of the class, and whether each is "held" out."""
    data: dict[int, dict[str, list]] = {k: {"x": [], "p": [], "g": [], "held": []} for k in sorted(classes)}
    for n, im in enumerate(images):
        keep = ~im.gt_ignore
        gt, labels = im.boxes[: im.num_gt][keep], im.gt_labels[keep]
        if len(gt) == 0 or not classes.intersection(labels.tolist()):
            continue
        props = im.boxes[im.num_gt:]
        iou, match = box_iou(torch.from_numpy(gt), torch.from_numpy(props)).max(dim=0)
        for r in np.flatnonzero(iou.numpy() > reg_iou):
            k = int(labels[match[r]])
            if k not in classes:
                continue
            d = data[k]
            d["x"].append(np.asarray(im.pool5[im.num_gt + r], dtype=np.float32) * scale)
            d["p"].append(props[r])
            d["g"].append(gt[match[r]])
            d["held"].append(n % holdout_every == 0)
    return data


def _fit_regressor(d: dict[str, list], dim: int, box_coder: Any, alpha: float) -> dict[str, np.ndarray]:
    """One class's regressor, weight (4, D5) and bias (4,) (zeros with fewer than 2 training proposals), and its
    held-out count and summed errors (1 - IoU) before and after regression."""
    held = np.array(d["held"], dtype=bool)
    fitted = {"weight": np.zeros((4, dim), np.float32), "bias": np.zeros(4, np.float32), "held": np.array(0),
              "error_before": np.array(0.0), "error_after": np.array(0.0)}
    if (~held).sum() < 2:
        return fitted
    x, p, g = np.stack(d["x"]), np.stack(d["p"]), np.stack(d["g"])
    fitted["weight"], fitted["bias"] = fit_box_regressor(x[~held], p[~held], g[~held], box_coder, alpha=alpha)
    if held.any():
        fitted["held"] = np.array(int(held.sum()))
        fitted["error_before"] = np.array(mean_box_error(p[held], g[held]) * held.sum())
        fitted["error_after"] = np.array(mean_box_error(apply_box_regressor(
            fitted["weight"], fitted["bias"], x[held], p[held], box_coder), g[held]) * held.sum())
    return fitted
