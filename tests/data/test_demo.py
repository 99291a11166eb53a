import json

import numpy as np

from detkit.data.coco import COCODataset
from detkit.data.demo import DEMO_CLASSES, _background, ensure_demo, render_image

SMALL = {"num_train": 4, "num_test": 2, "image_size": 160}


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_arguments_give_identical_files_and_reuse_the_cache(tmp_path):
    first = ensure_demo(tmp_path / "a", **SMALL)
    second = ensure_demo(tmp_path / "b", **SMALL)
    assert _files(first) == _files(second)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert ensure_demo(tmp_path / "a", **SMALL) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [first.name]


def test_other_seed_or_size_gives_a_different_dataset(tmp_path):
    base = ensure_demo(tmp_path, **SMALL)
    other_seed = ensure_demo(tmp_path, seed=1, **SMALL)
    bigger = ensure_demo(tmp_path, **{**SMALL, "num_test": 3})
    assert len({base, other_seed, bigger}) == 3
    assert (base / "train" / "00000.jpg").read_bytes() != (other_seed / "train" / "00000.jpg").read_bytes()
    assert len(json.loads((bigger / "test.json").read_text())["images"]) == 3


def test_a_half_written_cache_is_regenerated(tmp_path):
    folder = ensure_demo(tmp_path, **SMALL)
    (folder / "manifest.json").unlink()
    (folder / "train.json").write_text("{")
    assert ensure_demo(tmp_path, **SMALL) == folder
    assert len(COCODataset(folder / "train", folder / "train.json")) == 4


def test_boxes_are_inside_the_image_and_tight_around_the_drawn_pixels():
    for index in range(5):
        image, boxes, labels = render_image(np.random.default_rng([0, 0, index]), 160, 192)
        background = _background(np.random.default_rng([0, 0, index]), 160, 192).astype(np.uint8)
        drawn = (image != background).any(axis=2)
        assert 2 <= len(boxes) <= 8 and set(labels.tolist()) <= set(range(1, len(DEMO_CLASSES) + 1))
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 192).all() and (boxes[:, 3] <= 160).all()
        covered = np.zeros_like(drawn)
        for x1, y1, x2, y2 in boxes.astype(int):
            assert 14 <= x2 - x1 <= 120 and 14 <= y2 - y1 <= 120
            assert drawn[y1, x1:x2].any() and drawn[y2 - 1, x1:x2].any()
            assert drawn[y1:y2, x1].any() and drawn[y1:y2, x2 - 1].any()
            covered[y1:y2, x1:x2] = True
        assert not (drawn & ~covered).any()


def test_written_split_loads_as_a_coco_dataset(tmp_path):
    folder = ensure_demo(tmp_path, **SMALL)
    ds = COCODataset(folder / "test", folder / "test.json")
    image, target = ds[1]
    assert ds.classes == DEMO_CLASSES and image.shape == (3, 160, 160) and len(target["boxes"]) >= 2
