"""R-CNN's feature cache validated where it is read (issue 21 item 3): a damaged file is one line naming it."""
from __future__ import annotations

import numpy as np
import pytest

from detkit.recipes.rcnn.features import FeatureCache
from detkit.errors import DetkitError


def filled(tmp_path, regions: int = 5, gt: int = 2) -> FeatureCache:
    cache = FeatureCache(tmp_path / "3_features" / "cache")
    rng = np.random.default_rng(0)
    boxes = np.tile(np.float32([[1, 2, 10, 12]]), (regions, 1))
    cache.save(7, rng.random((regions, 8)), rng.random((regions, 6)), boxes, np.arange(1, gt + 1), np.zeros(gt, bool))
    return cache


def test_a_whole_cached_image_reads_back(tmp_path):
    image = filled(tmp_path).load(7)
    assert image.fc7.shape == (5, 8) and image.fc7.dtype == np.float16 and image.num_gt == 2
    assert image.boxes.dtype == np.float32 and image.gt_labels.tolist() == [1, 2]


def damage_truncated_npy(root):
    path = root / "7.fc7.npy"
    path.write_bytes(path.read_bytes()[:-20])
    return path


def damage_garbage_npz(root):
    path = root / "7.boxes.npz"
    path.write_bytes(b"not a zip archive at all" * 4)
    return path


def damage_fewer_rows(root):
    path = root / "7.pool5.npy"
    np.save(path, np.zeros((4, 6), np.float16))
    return path


def damage_wrong_rank(root):
    path = root / "7.fc7.npy"
    np.save(path, np.zeros((5,), np.float16))
    return path


def damage_nan_boxes(root):
    path = root / "7.boxes.npz"
    boxes = np.tile(np.float32([[1, 2, 10, 12]]), (5, 1))
    boxes[3, 2] = np.nan
    np.savez(path, boxes=boxes, gt_labels=np.int64([1, 2]), gt_ignore=np.zeros(2, bool))
    return path


def damage_more_labels_than_regions(root):
    path = root / "7.boxes.npz"
    np.savez(path, boxes=np.tile(np.float32([[1, 2, 10, 12]]), (5, 1)), gt_labels=np.ones(6, np.int64),
             gt_ignore=np.zeros(6, bool))
    return path


def damage_missing_array(root):
    path = root / "7.boxes.npz"
    np.savez(path, boxes=np.tile(np.float32([[1, 2, 10, 12]]), (5, 1)))
    return path


@pytest.mark.parametrize("damage,what", [
    (damage_truncated_npy, "is unreadable"), (damage_garbage_npz, "is unreadable"),
    (damage_missing_array, "is unreadable"), (damage_fewer_rows, "pool5 holds 4 rows for the 5 regions"),
    (damage_wrong_rank, r"fc7 holds float16 shape \(5,\), not \(R, D\)"),
    (damage_nan_boxes, "boxes holds 1 boxes that are not finite"),
    (damage_more_labels_than_regions, "6 ground-truth labels .* for 5 regions"),
])
def test_a_damaged_cache_file_is_one_line_naming_it_and_how_to_recompute(tmp_path, damage, what):
    cache = filled(tmp_path)
    path = damage(cache.root)
    with pytest.raises(DetkitError, match=what) as error:
        cache.load(7)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"feature cache file {path}")
    assert f"{cache.root / '7'}.*" in message and str(tmp_path / "3_features" / "stage_done.json") in message
    assert "rerun train.py with --resume" in message and "pickle" not in message
