"""Datasets (VOC, COCO, synthetic demo), bbox-aware transforms and deterministic loaders.

Every dataset gives ``ds[i] -> (image, target)``: image CHW float32 RGB in [0, 1]; target ``boxes`` float32 (M, 4)
x1, y1, x2, y2 absolute 0-based continuous pixels, ``labels`` int64 (M,) in 1..K (background = 0), ``image_id``
int, ``ignore`` bool (M,), ``orig_size`` (H, W) of the stored image.
"""

from __future__ import annotations

from pathlib import Path

from detkit.data.base import DetectionDataset, ImageRecord, Transform
from detkit.data.coco import COCODataset, check_ann_file_exists
from detkit.data.demo import DEMO_CLASSES, ensure_demo
from detkit.data.image_io import read_image, to_tensor
from detkit.data.loader import TrainStream, build_test_loader, build_train_loader, collate
from detkit.data.transforms import DetectionTransform, build_transforms
from detkit.data.voc import VOCDataset, read_split
from detkit.errors import DetkitError
from detkit.registries import FORMATS, resolve


def build_demo(root: str | None, split: str | None, ann_file: str | None, train: bool, transforms: Transform | None,
          skip_corrupt: bool, demo_cache: str | None) -> DetectionDataset:
    """The embedded demo set (generated on first use into demo_cache), split train / test; root is ignored."""
    folder = ensure_demo(demo_cache)
    split = split or ("train" if train else "test")
    if split not in ("train", "test"):
        raise DetkitError(f"Demo data has splits 'train' and 'test', got split '{split}'.")
    return COCODataset(folder / split, folder / f"{split}.json", skip_corrupt=skip_corrupt, transforms=transforms)


def build_voc(root: str | None, split: str | None, ann_file: str | None, train: bool, transforms: Transform | None,
         skip_corrupt: bool, demo_cache: str | None) -> DetectionDataset:
    """A Pascal VOC folder (root), split trainval / test by default."""
    _need_root("voc", root)
    return VOCDataset(root, _voc_split(split, train), skip_corrupt=skip_corrupt, transforms=transforms)


def build_coco(root: str | None, split: str | None, ann_file: str | None, train: bool, transforms: Transform | None,
          skip_corrupt: bool, demo_cache: str | None) -> DetectionDataset:
    """COCO json (ann_file, relative to root); images in root/split when a split is given, else in root."""
    ann_path = _coco_ann_file(root, ann_file)
    image_dir = Path(root) / split if split else Path(root)
    return COCODataset(image_dir, ann_path, skip_corrupt=skip_corrupt, transforms=transforms)


def check_data_paths(format: str, root: str | None, split: str | None, ann_file: str | None, train: bool) -> None:
    """Raise the DetkitError the dataset's builder would raise for a missing root, VOC split file or COCO annotation
    file, without reading any annotation: a cheap check that a run makes before slow work (a weights download).
    Formats other than voc and coco are left to their builders."""
    if format == "voc":
        _need_root(format, root)
        read_split(Path(root), _voc_split(split, train))
    elif format == "coco":
        check_ann_file_exists(_coco_ann_file(root, ann_file))


def _need_root(format: str, root: str | None) -> None:
    if not root:
        raise DetkitError(f"Data format '{format}' needs a root folder (data.train.root / data.test.root).")


def _voc_split(split: str | None, train: bool) -> str:
    return split or ("trainval" if train else "test")


def _coco_ann_file(root: str | None, ann_file: str | None) -> Path:
    """root / ann_file; DetkitError when either is unset."""
    _need_root("coco", root)
    if not ann_file:
        raise DetkitError("Data format 'coco' needs an ann_file (data.train.ann_file / data.test.ann_file).")
    return Path(root) / ann_file


# data.*.format -> the function that builds that format's dataset: detkit.registries.FORMATS (a new format is one
# module and one line there), re-exported here as FORMATS.


def build_dataset(format: str, root: str | None, split: str | None, ann_file: str | None, train: bool,
                  transforms: Transform | None = None, skip_corrupt: bool = False,
                  demo_cache: str | None = None) -> DetectionDataset:
    """Dataset from config values: demo (split train/test, root ignored), voc (root + split), coco (root + ann_file).

    For coco, ``ann_file`` is relative to ``root`` and images lie in ``root/split`` when a split is given, else in
    ``root``. A missing split defaults to train/test (demo), trainval/test (voc) from ``train``.
    """
    if format not in FORMATS:
        raise DetkitError(f"Unknown data format '{format}'; expected one of {', '.join(FORMATS)}.")
    return resolve(FORMATS[format])(root, split, ann_file, train, transforms, skip_corrupt, demo_cache)


__all__ = [
    "COCODataset", "DEMO_CLASSES", "DetectionDataset", "DetectionTransform", "FORMATS", "ImageRecord", "TrainStream",
    "VOCDataset", "build_dataset", "build_test_loader", "build_train_loader", "build_transforms", "check_data_paths",
    "collate", "ensure_demo", "read_image", "to_tensor",
]
