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
rewrite or append to shards to resume.
"""
from __future__ import annotations

import json
import multiprocessing
from contextlib import closing
import os
import signal
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from detkit.data.image_io import read_image, to_tensor
from detkit.modeling.preprocess import to_input_pixels
from detkit.errors import DetkitError
from detkit.evaluation.recall import proposal_recall
from detkit.modeling.proposals.selective_search import finish_boxes, propose_image  # noqa: F401 (torch-free: detkit.deploy)

META_FILE = "meta.json"
RECALL_FILE = "recall.json"
AR_LIMITS = (100, 300, 1000)  # COCO's proposal metrics (AR@100/300/1000)
RECALL_IOUS = (0.5, 0.7)  # the IoU the detector trains positives at (0.5) and a stricter one (0.7)


class ProposalStore:
    """A folder of per-image proposals keyed by dataset image id (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, image_id: int) -> Path:
        return self.root / f"{int(image_id)}.npy"

    def has(self, image_id: int) -> bool:
        """Whether the store holds image ``image_id``'s proposals."""
        return self._path(image_id).is_file()

    def load(self, image_id: int) -> np.ndarray:
        """(P, 4) float32 boxes of image ``image_id`` in stored-image pixels."""
        path = self._path(image_id)
        if not path.is_file():
            raise DetkitError(f"proposal store {self.root} has no proposals for image id {image_id} "
                              f"(fill it with tools/propose.py)")
        try:
            boxes = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DetkitError(f"proposal file {path} is unreadable ({error}); delete it and run tools/propose.py "
                              f"again") from error
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise DetkitError(f"proposal file {path} holds shape {boxes.shape}, not (P, 4)")
        return boxes.astype(np.float32, copy=False)

    def save(self, image_id: int, boxes: np.ndarray) -> None:
        """Writes image ``image_id``'s (P, 4) boxes atomically (temporary file, then rename)."""
        boxes = np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(image_id)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, boxes, allow_pickle=False)
        os.replace(tmp, path)

    def remove_partial_files(self) -> None:
        """Deletes temporary files a killed writer left behind."""
        if self.root.is_dir():
            for tmp in self.root.glob("*.tmp*"):
                tmp.unlink(missing_ok=True)

    def read_meta(self) -> dict[str, Any] | None:
        """The store's meta.json, or None for a new store."""
        path = self.root / META_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DetkitError(f"proposal store {self.root}: {META_FILE} is malformed ({error})") from error

    def bind(self, settings: dict[str, Any], images: dict[int, str]) -> None:
        """Records settings and image file names in a new store; in an existing one, checks that they agree."""
        meta = self.read_meta() or {"settings": settings, "images": {}}
        old = meta["settings"]
        for key in sorted(set(old) | set(settings)):
            if old.get(key) != settings.get(key):
                raise DetkitError(f"proposal store {self.root} was made with {key}={old.get(key)!r}, not "
                                  f"{settings.get(key)!r}; use another store folder or delete this one")
        known = meta["images"]
        for image_id, name in images.items():
            if known.get(str(image_id), name) != name:
                raise DetkitError(f"proposal store {self.root} holds image id {image_id} for "
                                  f"{known[str(image_id)]!r}, but the dataset's image {image_id} is {name!r}; "
                                  f"use another store folder or delete this one")
        if self.read_meta() is None or any(str(i) not in known for i in images):
            known.update({str(i): name for i, name in images.items()})
            self.root.mkdir(parents=True, exist_ok=True)
            _write_json(self.root / META_FILE, meta)


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
    batch, _, _ = model.preprocessor([to_tensor(image).to(device)])
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(tuple(batch.tensors.shape[-2:]), batch.image_sizes, list(features.values()))
    height, width = image.shape[:2]
    boxes = to_input_pixels(proposals[0].float(), batch.image_sizes[0], (height, width)).cpu().numpy()
    return finish_boxes(boxes, height, width, min_size, top_k)


def _search_task(task: tuple[int, str, str, int, float, int]) -> tuple[int, np.ndarray]:
    """Pool task: (image id, path, mode, max_side, min_size, top_k) -> (image id, boxes)."""
    image_id, path, mode, max_side, min_size, top_k = task
    return image_id, propose_image(read_image(path), mode=mode, max_side=max_side, min_size=min_size, top_k=top_k)


def _init_worker() -> None:
    """Pool worker set-up: one OpenCV thread; Ctrl-C is the parent's to handle, SIGTERM ends it silently."""
    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def propose_dataset(dataset: Any, store: ProposalStore | str | Path, *, mode: str = "fast", max_side: int = 500,
                    min_size: float = 1.0, top_k: int = 2000, workers: int = 1, rpn_model: nn.Module | None = None,
                    rpn_weights: str | Path | None = None, device: str | torch.device = "cpu",
                    progress: bool = True, method: str | None = None) -> dict[str, float] | None:
    """Fills the images of ``dataset`` missing from ``store``; returns (and writes) recall.json when it has boxes.

    ``dataset`` needs ``image_ids``, ``image_path(i)``, ``records`` (file names) and ``target(i)``. With
    ``rpn_model`` (and its ``rpn_weights`` path, recorded in the store) the RPN proposes, in this process.
    ``method`` defaults to 'rpn' with an rpn_model, else 'selective_search'; method 'rpn' on a complete store
    needs no model.
    """
    store = store if isinstance(store, ProposalStore) else ProposalStore(store)
    method = method or ("rpn" if rpn_model is not None else "selective_search")
    settings = proposal_settings(method=method, mode=mode, max_side=max_side, min_size=min_size, top_k=top_k,
                                 rpn_weights=rpn_weights)
    store.bind(settings, {r.image_id: r.file_name for r in dataset.records})
    store.remove_partial_files()
    todo = [(image_id, str(dataset.image_path(i))) for i, image_id in enumerate(dataset.image_ids)
            if not store.has(image_id)]
    if todo and method == "rpn" and rpn_model is None:
        raise DetkitError(f"proposal store {store.root} lacks {len(todo)} images and method 'rpn' needs the model")
    bar = tqdm(total=len(dataset.image_ids), initial=len(dataset.image_ids) - len(todo), unit="img",
               desc=f"proposals {store.root}", disable=not progress or not todo, dynamic_ncols=True)
    with bar, closing(_proposals(todo, settings, workers, rpn_model, device)) as results:
        for image_id, boxes in results:
            store.save(image_id, boxes)
            bar.update(1)
    return _recall(dataset, store, fresh=not todo)


def _proposals(todo: list[tuple[int, str]], settings: dict[str, Any], workers: int, rpn_model: nn.Module | None,
               device: str | torch.device):
    """Yields (image id, boxes) for every (image id, path) in todo, in a process pool when workers > 1."""
    if rpn_model is not None:
        rpn_model.to(device).eval()
        for image_id, path in todo:
            yield image_id, rpn_propose_image(rpn_model, read_image(path), min_size=settings["min_size"],
                                              top_k=settings["top_k"], device=device)
        return
    tasks = [(image_id, path, settings["mode"], settings["max_side"], settings["min_size"], settings["top_k"])
             for image_id, path in todo]
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
        recall = json.loads(path.read_text())
        if recall.get("images") == len(dataset.image_ids):
            return recall
    proposals, gt_boxes = [], []
    for i, image_id in enumerate(dataset.image_ids):
        proposals.append(torch.from_numpy(store.load(image_id)))
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
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
