"""Region proposals as data: a per-image store that selective search or a trained RPN fills once per split.

Shapes and names:
    P       proposals of one image, best first (selective search: OpenCV's rank; RPN: objectness)
    boxes   float32 (P, 4) x1, y1, x2, y2 in absolute, continuous pixels of the stored (unresized) image
    store   a folder: ``meta.json`` (the settings that made it and the file name of every image id),
            ``<image_id>.npy`` per image, and ``recall.json`` when the split has ground truth

Why one ``.npy`` file per image rather than shards or one pickle (detectron2's layout): each image is written with
one atomic rename, so a killed run loses at most the images in flight and resumes without a journal; a data loader
worker reads one small file by image id (memory-mappable) instead of loading the whole split; and VOC (5k images)
or COCO (118k) file counts are well within what a file system lists quickly. A sharded layout would have to
rewrite or append to shards to resume. The store's folder (files validated where read, many writers at once) is
detkit.data.proposal_store; this module fills it.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
from contextlib import closing
import signal
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from detkit.progress import progress_bar

from detkit.atomic import write_json
from detkit.data.image_io import read_image, to_tensor
from detkit.errors import DetkitError
from detkit.ranks import barrier, get_rank, get_world_size, share_todo, wait_until_done
from detkit.evaluation.recall import AR_LIMITS, proposal_recall
from detkit.modeling.proposals.selective_search import finish_boxes, propose_image  # noqa: F401 (re-exported; torch-free: detkit.deploy)
from detkit.data.proposal_store import META_FILE, RECALL_FILE, ProposalStore  # noqa: F401 (API)

logger = logging.getLogger(__name__)
RECALL_IOUS = (0.5, 0.7)  # the IoU the detector trains positives at (0.5) and a stricter one (0.7)
WAIT_POLL_S = 0.5  # how often a rank that finished its share looks for the other ranks' files


def proposal_settings(*, method: str = "selective_search", mode: str = "fast", max_side: int = 500,
                      min_size: float = 1.0, top_k: int = 2000, rpn_weights: str | Path | None = None
                      ) -> dict[str, Any]:
    """The settings a store records; a store made with other settings is refused."""
    if method == "rpn":
        if rpn_weights is None:
            raise DetkitError("RPN proposals need the trained weights (proposals.rpn_weights or --from-rpn)")
        weights = Path(rpn_weights)
        if not weights.is_file():
            raise DetkitError(f"RPN weights file {weights} does not exist")
        stat = weights.stat()
        source = {"rpn_weights": str(weights.resolve()), "rpn_weights_bytes": stat.st_size,
                  "rpn_weights_mtime_ns": stat.st_mtime_ns}
        return {"method": "rpn", "min_size": float(min_size), "top_k": int(top_k), **source}
    if mode not in ("fast", "quality"):
        raise DetkitError(f"selective search mode must be 'fast' or 'quality', got {mode!r}")
    if max_side < 1 or top_k < 1 or min_size < 0:
        raise DetkitError(f"proposal settings need max_side >= 1, top_k >= 1 and min_size >= 0; got max_side="
                          f"{max_side}, top_k={top_k}, min_size={min_size}")
    return {"method": "selective_search", "mode": mode, "max_side": int(max_side), "min_size": float(min_size),
            "top_k": int(top_k)}


@torch.no_grad()
def rpn_propose_image(model: nn.Module, image: np.ndarray, *, min_size: float = 1.0, top_k: int = 2000,
                      device: str | torch.device = "cpu") -> np.ndarray:
    """A trained Faster R-CNN's RPN proposals (P, 4) float32 in the pixels of ``image`` (HWC uint8 RGB)."""
    model.eval()
    boxes = model.propose([to_tensor(image).to(device)])[0].cpu().numpy()
    height, width = image.shape[:2]
    return finish_boxes(boxes, height, width, min_size, top_k)


def _search_task(task: tuple[int, str, str, int, float, int, str]) -> tuple[int, np.ndarray | None]:
    """Pool task: (image id, path, mode, max_side, min_size, top_k, store file) -> (image id, boxes), or None
    boxes when another writer stored the image meanwhile."""
    image_id, path, mode, max_side, min_size, top_k, stored = task
    if os.path.exists(stored):
        return image_id, None
    return image_id, propose_image(read_image(path), mode=mode, max_side=max_side, min_size=min_size, top_k=top_k)


def available_workers() -> int:
    """The cores this process may use (its CPU affinity), divided among the ranks torchrun starts on this machine
    (LOCAL_WORLD_SIZE), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def cap_workers(workers: int) -> int:
    """``workers`` capped at available_workers(), with a warning when capped (more processes than cores only
    slow the search down: each runs one OpenCV thread)."""
    cores = available_workers()
    if workers > cores:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        per = f" per rank ({local} ranks on this machine)" if local > 1 else ""
        logger.warning("proposals.workers=%d but this process has %d core(s)%s: using %d worker process(es)",
                       workers, cores, per, cores)
    return max(1, min(workers, cores))


def _init_worker() -> None:
    """Pool worker set-up: one OpenCV thread; Ctrl-C is the parent's to handle, SIGTERM ends it silently."""
    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def propose_dataset(dataset: Any, store: ProposalStore | str | Path, *, mode: str = "fast", max_side: int = 500,
                    min_size: float = 1.0, top_k: int = 2000, workers: int = 1, rpn_model: nn.Module | None = None,
                    rpn_weights: str | Path | None = None, device: str | torch.device = "cpu",
                    progress: bool = True, method: str | None = None, rebuild: bool = False
                    ) -> dict[str, float] | None:
    """Fills the images of ``dataset`` missing from ``store``; returns (and writes) recall.json when it has boxes.

    ``dataset`` needs ``image_ids``, ``image_path(i)``, ``records`` (file names and sizes) and ``target(i)``. With
    ``rpn_model`` (and its ``rpn_weights`` path, recorded in the store) the RPN proposes, in this process.
    ``method`` defaults to 'rpn' with an rpn_model, else 'selective_search'; method 'rpn' on a complete store
    needs no model. ``workers`` is capped at the cores of this process (available_workers). ``rebuild`` first
    deletes the store's own files (a store whose meta.json is missing or damaged is refused without it).

    Under a torch.distributed process group every rank must call this: the missing images are shared among the
    ranks (rank r takes every W-th), rank 0 computes the recall once all images are stored, and every rank returns
    it. Other writers (another group, another machine) may fill the same folder at the same time.
    Raises DetkitError for a store of other settings or images, or a damaged store.
    """
    store = store if isinstance(store, ProposalStore) else ProposalStore(store)
    method = method or ("rpn" if rpn_model is not None else "selective_search")
    settings = proposal_settings(method=method, mode=mode, max_side=max_side, min_size=min_size, top_k=top_k,
                                 rpn_weights=rpn_weights)
    rank, world = get_rank(), get_world_size()
    if rebuild:
        if rank == 0:
            store.clear()
        barrier()
    store.bind(settings, {r.image_id: r.file_name for r in dataset.records})
    store.remove_partial_files()
    images = [(image_id, str(dataset.image_path(i))) for i, image_id in enumerate(dataset.image_ids)]
    missing, todo = share_todo(images, lambda item: store.has(item[0]))
    if todo and method == "rpn" and rpn_model is None:
        raise DetkitError(f"proposal store {store.root} lacks {len(missing)} images and method 'rpn' needs the model")
    total = len(dataset.image_ids) if world == 1 else len(todo)
    bar = progress_bar(total=total, initial=total - len(todo), unit="img", desc=f"proposals {store.root}",
                       disable=not progress or not todo or rank != 0)
    with bar, closing(_proposals(todo, store, settings, cap_workers(workers), rpn_model, device)) as results:
        for image_id, boxes in results:
            if boxes is not None:
                store.save(image_id, boxes)
            bar.update(1)
    if world > 1:
        wait_until_done([image_id for image_id, _ in missing], store.has, WAIT_POLL_S)
        recall = _recall(dataset, store, fresh=not missing) if rank == 0 else None
        barrier()  # recall.json is written
        return recall if rank == 0 else _recall(dataset, store, fresh=True)
    return _recall(dataset, store, fresh=not missing)


def _proposals(todo: list[tuple[int, str]], store: ProposalStore, settings: dict[str, Any], workers: int,
               rpn_model: nn.Module | None, device: str | torch.device):
    """Yields (image id, boxes) for every (image id, path) in todo, in a process pool when workers > 1; boxes are
    None for an image another writer stored meanwhile."""
    if rpn_model is not None:
        rpn_model.to(device).eval()
        for image_id, path in todo:
            yield image_id, rpn_propose_image(rpn_model, read_image(path), min_size=settings["min_size"],
                                              top_k=settings["top_k"], device=device)
        return
    tasks = [(image_id, path, settings["mode"], settings["max_side"], settings["min_size"], settings["top_k"],
              str(store.root / f"{image_id}.npy")) for image_id, path in todo]
    if workers <= 1 or len(tasks) <= 1:
        # One OpenCV thread here too: a pool of OpenCV threads in this process would hang the DataLoader workers
        # that training forks next (cv2.setNumThreads in a forked child waits on the parent's pool forever).
        cv2.setNumThreads(1)
        for task in tasks:
            yield _search_task(task)
        return
    # Spawned (not forked) workers: the parent may hold torch / OpenMP threads that fork does not copy safely.
    # SIGINT is ignored while they start, so they inherit the ignore and a Ctrl-C reaches only the parent.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pool = multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)), initializer=_init_worker)
    finally:
        signal.signal(signal.SIGINT, previous)
    with pool:  # leaving the block (done, error or interrupt) terminates the workers
        yield from pool.imap_unordered(_search_task, tasks)


def _recall(dataset: Any, store: ProposalStore, fresh: bool) -> dict[str, float] | None:
    """recall.json of a complete store (reused when nothing was added to the store), or None without ground truth."""
    if not any(len(r.boxes) for r in dataset.records):
        return None
    path = store.root / RECALL_FILE
    if fresh and path.is_file():
        try:
            recall = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            recall = None  # damaged: computed again below
        keys = [f"AR@{n}" for n in AR_LIMITS] + [f"recall@{iou}" for iou in RECALL_IOUS] + ["boxes_per_image",
                                                                                             "gt_boxes"]
        if isinstance(recall, dict) and recall.get("images") == len(dataset.image_ids) and all(
                isinstance(recall.get(k), (int, float)) for k in keys):
            return recall
    proposals, gt_boxes = [], []
    for i, image_id in enumerate(dataset.image_ids):
        record = dataset.records[i]
        proposals.append(torch.from_numpy(store.load(image_id, (record.height, record.width))))
        target = dataset.target(i)
        gt_boxes.append(target["boxes"][~target["ignore"]])
    recall = recall_summary(proposals, gt_boxes)
    _write_json(path, recall)
    return recall


def recall_summary(proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor]) -> dict[str, float]:
    """AR@100/300/1000 (IoU 0.50:0.95), recall at IoU 0.5 and 0.7 with every proposal, boxes per image."""
    recall: dict[str, float] = dict(proposal_recall(proposals, gt_boxes, limits=AR_LIMITS))
    every = max((len(p) for p in proposals), default=0)
    for iou in RECALL_IOUS:
        recall[f"recall@{iou}"] = proposal_recall(proposals, gt_boxes, limits=(every,), iou_thresholds=(iou,))[
            f"AR@{every}"]
    recall["boxes_per_image"] = float(np.mean([len(p) for p in proposals])) if proposals else 0.0
    recall["images"] = len(proposals)
    recall["gt_boxes"] = int(sum(len(g) for g in gt_boxes))
    return recall


def format_recall_table(recall: dict[str, float], title: str = "") -> str:
    """recall.json as a two-row text table."""
    keys = [f"AR@{n}" for n in AR_LIMITS] + [f"recall@{iou}" for iou in RECALL_IOUS] + ["boxes_per_image"]
    head = " | ".join(f"{k:>15}" for k in keys)
    row = " | ".join(f"{recall[k]:>15.3f}" if k != "boxes_per_image" else f"{recall[k]:>15.1f}" for k in keys)
    note = f"{title} ({recall['images']} images, {recall['gt_boxes']} ground-truth boxes)"
    return f"{note}\n{head}\n{row}"


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data)
