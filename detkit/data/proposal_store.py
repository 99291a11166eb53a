"""The proposal store's folder: per-image files validated where they are read, metadata safe with many writers.

Shapes and names:
    P       proposals of one image
    boxes   float32 (P, 4) x1, y1, x2, y2 in absolute, continuous pixels of the stored (unresized) image
    store   a folder: ``meta.json`` ({"settings": {...}, "images": {"<image id>": "<file name>"}}),
            ``<image_id>.npy`` per image, and ``recall.json`` when the split has ground truth

Many writers (ranks of a torchrun group, processes on several machines sharing the folder) may fill one store at
once: every file is written under a temporary name unique across machines (host, pid, random token) and renamed
into place, so a reader sees a whole file or none; ``meta.json`` is created once with an atomic create-if-absent
(a hard link) and only compared afterwards; adding images to it takes a short exclusive lock file. A temporary
file is deleted only when its writer is known to be gone (a dead pid on this host, or over an hour old from
another host), never while another writer may still rename it.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from detkit.atomic import atomic_write, temp_path, write_json, writer_gone
from detkit.errors import DetkitError

META_FILE = "meta.json"
RECALL_FILE = "recall.json"
LOCK_WAIT_S = 60.0  # how long bind waits for another writer's meta.json lock before taking it as stale
REBUILD_HINT = "rebuild it with tools/propose.py --rebuild (propose_dataset(..., rebuild=True)) or use another folder"


def settings_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first setting (sorted by key) where two stores' settings differ, as 'key=old, not new'; None if equal."""
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}={old.get(key)!r}, not {new.get(key)!r}"
    return None


def validate_boxes(array: np.ndarray, where: str, image_size: tuple[int, int] | None = None,
                   max_boxes: int | None = None) -> np.ndarray:
    """(P, 4) float32 boxes, clipped to ``image_size`` (H, W) when given; raises DetkitError (``where`` first) for
    another shape, a non-numeric dtype, a NaN or infinite value, more than ``max_boxes`` rows, or a box with
    x2 <= x1 or y2 <= y1 (after clipping), naming the first such box."""
    if array.ndim != 2 or array.shape[1] != 4:
        raise DetkitError(f"{where} holds shape {tuple(array.shape)}, not (P, 4)")
    if array.dtype.kind not in "fiu":
        raise DetkitError(f"{where} holds {array.dtype} values, not float32 boxes")
    if max_boxes is not None and len(array) > max_boxes:
        raise DetkitError(f"{where} holds {len(array)} boxes, more than the store's top_k={max_boxes}")
    boxes = np.asarray(array, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1))
    if len(bad):
        raise DetkitError(f"{where}: box {bad[0]} {boxes[bad[0]].tolist()} is not finite ({len(bad)} of "
                          f"{len(boxes)} boxes are not)")
    clipped = boxes
    if image_size is not None:
        height, width = image_size
        clipped = boxes.copy()
        clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
        clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    bad = np.flatnonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    if len(bad):
        inside = f" inside the {image_size[1]}x{image_size[0]} (WxH) image" if image_size is not None else ""
        raise DetkitError(f"{where}: box {bad[0]} {boxes[bad[0]].tolist()} has no area{inside} (x2 <= x1 or "
                          f"y2 <= y1; {len(bad)} of {len(boxes)} boxes)")
    return clipped


class ProposalStore:
    """A folder of per-image proposals keyed by dataset image id (see the module docstring).

    ``fill_hint`` ends the error for a missing or damaged image file: how this store gets filled again.
    """

    def __init__(self, root: str | Path, *, fill_hint: str = "run tools/propose.py to fill it") -> None:
        self.root = Path(root)
        self.fill_hint = fill_hint
        self._max_boxes: int | None = None
        self._meta_read = False

    def _path(self, image_id: int) -> Path:
        return self.root / f"{int(image_id)}.npy"

    def has(self, image_id: int) -> bool:
        """Whether the store holds image ``image_id``'s proposals."""
        return self._path(image_id).is_file()

    def stored_ids(self) -> list[int]:
        """The image ids with a proposal file, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.stem) for p in self.root.glob("*.npy") if p.stem.isdigit())

    def load(self, image_id: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """(P, 4) float32 boxes of image ``image_id`` in stored-image pixels, clipped to ``image_size`` (H, W).

        Raises DetkitError naming the file when it is missing, unreadable, or holds anything but (P, 4) finite
        boxes with x2 > x1 and y2 > y1 inside the image (at most the store's top_k of them).
        """
        path = self._path(image_id)
        if not path.is_file():
            raise DetkitError(f"proposal store {self.root} has no proposals for image id {image_id}; "
                              f"{self.fill_hint}")
        if not self._meta_read:  # once per store object (and data loader worker): the count a file may hold
            meta = self.read_meta()
            top_k = (meta or {}).get("settings", {}).get("top_k")
            self._max_boxes = top_k if isinstance(top_k, int) else None
            self._meta_read = True
        where = f"proposal file {path}"
        try:
            with open(path, "rb") as f:
                if not f.read(6).startswith(b"\x93NUMPY"):  # else numpy's message is about pickled data
                    raise ValueError("not a .npy file: overwritten or not written by detkit")
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DetkitError(f"{where} is unreadable ({error}); delete it and {self.fill_hint}") from error
        if not isinstance(array, np.ndarray):
            raise DetkitError(f"{where} is not a .npy array; delete it and {self.fill_hint}")
        try:
            return validate_boxes(array, where, image_size, self._max_boxes)
        except DetkitError as error:
            raise DetkitError(f"{error}; delete it and {self.fill_hint}") from None

    def save(self, image_id: int, boxes: np.ndarray) -> None:
        """Writes image ``image_id``'s (P, 4) boxes atomically (a unique temporary file, then rename)."""
        boxes = np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(image_id)
        atomic_write(path, lambda f: np.save(f, boxes, allow_pickle=False), durable=False)

    def remove_partial_files(self) -> int:
        """Deletes temporary files whose writers are gone (another writer's file in flight stays); how many."""
        removed = 0
        if self.root.is_dir():
            now = time.time()
            for tmp in self.root.glob("*.tmp*"):
                if tmp.is_file() and writer_gone(tmp, now):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed

    def clear(self) -> int:
        """Deletes the store's own files (proposal files, meta.json, recall.json, stale temporary files) and no
        other file of the folder; how many. For a rebuild, asked for by the user."""
        removed = self.remove_partial_files()
        for path in [self._path(i) for i in self.stored_ids()] + [self.root / META_FILE, self.root / RECALL_FILE]:
            if path.is_file():
                path.unlink()
                removed += 1
        return removed

    def _damaged(self, what: str) -> DetkitError:
        return DetkitError(f"proposal store {self.root}: {self.root / META_FILE} {what}, so the settings its "
                           f"files were made with are unknown; {REBUILD_HINT}")

    def read_meta(self) -> dict[str, Any] | None:
        """The store's validated meta.json, or None for a new store; DetkitError when it is damaged."""
        path = self.root / META_FILE
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise self._damaged(f"is not valid JSON ({error})") from error
        if not isinstance(meta, dict):
            raise self._damaged(f"holds a {type(meta).__name__}, not an object")
        for key in ("settings", "images"):
            if not isinstance(meta.get(key), dict):
                raise self._damaged(f"has no {key!r} object")
        if not all(isinstance(name, str) for name in meta["images"].values()):
            raise self._damaged("maps image ids to something other than file names")
        return meta

    def bind(self, settings: dict[str, Any], images: dict[int, str]) -> None:
        """Records settings and image file names in a new store; in an existing one, checks that they agree.

        Safe with concurrent writers: a new meta.json is created only if absent (whoever is first wins, the others
        compare with it); image ids it lacks are added under a lock file. Raises DetkitError for other settings,
        another file name under an image id, proposal files without meta.json, or a damaged meta.json.
        """
        names = {str(image_id): name for image_id, name in images.items()}
        meta = self.read_meta()
        if meta is None:
            meta = self._create_meta({"settings": settings, "images": names})
        self._compare(meta, settings, names)
        if any(key not in meta["images"] for key in names):
            with self._meta_lock():
                meta = self.read_meta() or meta
                self._compare(meta, settings, names)
                meta["images"].update(names)
                write_json(self.root / META_FILE, meta)

    def _create_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """meta.json created if absent (a hard link of a finished temporary file: atomic, never replacing)."""
        orphans = self.stored_ids()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / META_FILE
        if orphans and not path.is_file():
            raise DetkitError(f"proposal store {self.root} holds {len(orphans)} proposal files but no {META_FILE}, "
                              f"so the settings they were made with are unknown; {REBUILD_HINT}")
        tmp = temp_path(path)
        try:
            tmp.write_text(json.dumps(meta, indent=1))
            try:
                os.link(tmp, path)
            except FileExistsError:  # another writer was first: compare with its meta.json
                pass
        finally:
            tmp.unlink(missing_ok=True)
        return self.read_meta() or meta

    def _compare(self, meta: dict[str, Any], settings: dict[str, Any], names: dict[str, str]) -> None:
        mismatch = settings_mismatch(meta["settings"], settings)
        if mismatch:
            raise DetkitError(f"proposal store {self.root} was made with {mismatch}; use another store folder, "
                              f"delete this one or rebuild it (tools/propose.py --rebuild)")
        known = meta["images"]
        for key, name in names.items():
            if known.get(key, name) != name:
                raise DetkitError(f"proposal store {self.root} holds image id {key} for {known[key]!r}, but the "
                                  f"dataset's image {key} is {name!r}; use another store folder or delete this one")

    @contextmanager
    def _meta_lock(self) -> Iterator[None]:
        """An exclusive lock file around changing meta.json (held for milliseconds)."""
        lock = self.root / f"{META_FILE}.lock"
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                try:
                    stale = time.time() - lock.stat().st_mtime > LOCK_WAIT_S
                except FileNotFoundError:
                    continue
                if stale or time.monotonic() > deadline:  # its holder was killed while holding it
                    lock.unlink(missing_ok=True)
                time.sleep(0.02)
        try:
            os.close(fd)
            yield
        finally:
            lock.unlink(missing_ok=True)
