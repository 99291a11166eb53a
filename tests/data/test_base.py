import warnings

import pytest

from detkit.data.voc import VOCDataset
from detkit.errors import DetkitError

from .conftest import write_image


def test_corrupt_image_raises_naming_the_file(tiny_voc):
    (tiny_voc / "JPEGImages" / "a.jpg").write_bytes(b"garbage")
    ds = VOCDataset(tiny_voc, "train")
    with pytest.raises(DetkitError, match="a.jpg"):
        ds[0]


def test_skip_corrupt_returns_next_readable_image_and_warns_once_per_file(tiny_voc):
    (tiny_voc / "JPEGImages" / "a.jpg").unlink()
    ds = VOCDataset(tiny_voc, "train", skip_corrupt=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ds[0]
        second = ds[0]
    assert first[1]["image_id"] == second[1]["image_id"] == ds.image_ids[1]
    assert len(caught) == 1 and "a.jpg" in str(caught[0].message)
    assert ds.num_skipped == 1


def test_skip_corrupt_with_no_readable_image_raises(tiny_voc):
    for name in ("a.jpg", "b.jpg"):
        (tiny_voc / "JPEGImages" / name).unlink()
    ds = VOCDataset(tiny_voc, "train", skip_corrupt=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DetkitError, match="No image"):
            ds[1]


def test_image_size_disagreeing_with_annotation_raises(tiny_voc):
    write_image(tiny_voc / "JPEGImages" / "b.jpg", 30, 24)
    with pytest.raises(DetkitError, match="b.jpg is 30x24"):
        VOCDataset(tiny_voc, "train")[1]


def test_transforms_get_the_sample_seed(tiny_voc):
    seen = []

    def record(image, boxes, labels, ignore, *, seed):
        seen.append(seed)
        return image, boxes, labels, ignore

    ds = VOCDataset(tiny_voc, "train", transforms=record)
    ds.get(1, seed=1234)
    ds[0]
    assert seen == [1234, 0]
