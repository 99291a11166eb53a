import warnings

import numpy as np
import pytest
import torch

from detkit.data.voc import VOCDataset
from detkit.errors import DetkitError

from .conftest import BCCD, voc_xml


def test_bccd_trainval_and_test_hold_all_boxes_minus_the_two_degenerate_ones():
    if not (BCCD / "ImageSets" / "Main" / "trainval.txt").is_file():
        pytest.skip(f"BCCD not found at {BCCD} (set DETKIT_BCCD)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = VOCDataset(BCCD, "trainval+test")
    assert len(ds) == 364
    assert sum(len(r.boxes) for r in ds.records) == 4888 - 2
    assert ds.classes == ["Platelets", "RBC", "WBC"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "BloodImage_00338" in messages[0] and "BloodImage_00343" in messages[0] and " 2 " in messages[0]
    image, target = ds[0]
    assert image.shape == (3, 480, 640) and target["orig_size"] == (480, 640)


def test_one_based_inclusive_boxes_become_zero_based_and_difficult_becomes_ignore(tiny_voc):
    ds = VOCDataset(tiny_voc, "train")
    assert ds.classes == ["cat", "dog"] and ds.label_to_category_id == {1: 1, 2: 2}
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 24, 32) and 0.0 <= image.min() <= image.max() <= 1.0
    assert target["boxes"].tolist() == [[0.0, 1.0, 10.0, 12.0], [4.0, 4.0, 20.0, 20.0]]
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    assert target["ignore"].tolist() == [False, True]
    assert target["image_id"] == ds.image_ids[0] and target["orig_size"] == (24, 32)
    stored = ds.target(0)
    assert all(torch.equal(stored[k], target[k]) for k in ("boxes", "labels", "ignore"))
    target["boxes"] *= 2
    assert ds[0][1]["boxes"].tolist() == stored["boxes"].tolist()
    gt = ds.coco_gt()
    assert gt["annotations"][0]["bbox"] == [0.0, 1.0, 10.0, 11.0] and gt["annotations"][1]["iscrowd"] == 1
    assert gt["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def test_aspect_ratios_come_from_annotations_without_decoding(tiny_voc):
    for image in (tiny_voc / "JPEGImages").iterdir():
        image.unlink()
    ds = VOCDataset(tiny_voc, "train")
    assert np.allclose(ds.aspect_ratios(), [32 / 24, 24 / 32])


def test_class_outside_given_classes_names_the_file(tiny_voc):
    with pytest.raises(DetkitError, match="a.xml.*'cat'"):
        VOCDataset(tiny_voc, "train", classes=["dog"])


def test_missing_split_and_broken_xml_are_reported_by_file(tiny_voc):
    with pytest.raises(DetkitError, match="val.txt"):
        VOCDataset(tiny_voc, "val")
    (tiny_voc / "Annotations" / "b.xml").write_text(voc_xml(32, 24, [])[:-5])
    with pytest.raises(DetkitError, match="b.xml"):
        VOCDataset(tiny_voc, "train")


@pytest.mark.parametrize("value", ["nan", "inf", "abc", ""])
def test_coordinate_that_is_not_a_finite_number_names_file_object_and_field(tiny_voc, value):
    xml = voc_xml(32, 24, [("cat", (3, 4, 24, 32), 0)]).replace("<ymax>32</ymax>", f"<ymax>{value}</ymax>")
    (tiny_voc / "Annotations" / "b.xml").write_text(xml)
    with pytest.raises(DetkitError) as error:
        VOCDataset(tiny_voc, "train")
    assert str(error.value) == (f"VOC annotation file {tiny_voc / 'Annotations' / 'b.xml'}: object 0 (cat) <ymax> is "
                                f"{value!r}, not a finite number.")


@pytest.mark.parametrize("size", ["0", "-5", "nan", "24.5"])
def test_image_size_that_is_not_a_positive_whole_number_is_an_error(tiny_voc, size):
    xml = voc_xml(32, 24, [("cat", (3, 4, 24, 32), 0)]).replace("<width>24</width>", f"<width>{size}</width>")
    (tiny_voc / "Annotations" / "b.xml").write_text(xml)
    with pytest.raises(DetkitError, match="b.xml"):
        VOCDataset(tiny_voc, "train")
