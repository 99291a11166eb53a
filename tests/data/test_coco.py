import json
import warnings

import pytest
from pycocotools.coco import COCO

from detkit.data.coco import COCODataset
from detkit.errors import DetkitError

pytestmark = pytest.mark.filterwarnings("ignore:.*zero-area or inverted")


def test_category_ids_map_to_contiguous_labels_and_back(tiny_coco):
    ds = COCODataset(*tiny_coco)
    assert ds.classes == ["car", "kite"]
    assert ds.label_to_category_id == {1: 3, 2: 7}
    assert ds.image_ids == [11, 5]
    _, target = ds[0]
    assert target["labels"].tolist() == [2, 1]
    assert target["boxes"].tolist() == [[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, 32.0, 24.0]]
    assert target["ignore"].tolist() == [False, True]


def test_image_without_annotations_is_background_only(tiny_coco):
    image, target = COCODataset(*tiny_coco)[1]
    assert image.shape == (3, 20, 20)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["image_id"] == 5


def test_degenerate_box_is_dropped_with_one_warning_naming_the_file(tiny_coco):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = COCODataset(*tiny_coco)
    assert [str(w.message) for w in caught if "dropped" in str(w.message)] == [
        f"{tiny_coco[1]}: dropped 1 zero-area or inverted box(es) in 1 file(s): x.jpg."]
    assert len(ds.records[0].boxes) == 2


def test_coco_gt_keeps_file_category_ids_areas_and_crowd_and_loads_in_pycocotools(tiny_coco):
    gt = COCODataset(*tiny_coco).coco_gt()
    assert [c["id"] for c in gt["categories"]] == [3, 7]
    assert [(a["category_id"], a["area"], a["iscrowd"]) for a in gt["annotations"]] == [(7, 40.0, 0), (3, 700.0, 1)]
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    assert sorted(coco.getImgIds()) == [5, 11]


def test_malformed_json_is_reported_by_file(tmp_path, tiny_coco):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DetkitError, match="bad.json.*'annotations'"):
        COCODataset(tiny_coco[0], bad)
    data = json.loads(tiny_coco[1].read_text())
    data["annotations"][0]["category_id"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(DetkitError, match="bad.json.*annotation id 1"):
        COCODataset(tiny_coco[0], bad)


def rewrite(ann_file, edit):
    data = json.loads(ann_file.read_text())
    edit(data)
    ann_file.write_text(json.dumps(data))


def test_two_images_with_one_id_is_an_error_naming_file_id_and_field(tiny_coco):
    # before: the second image silently took the first one's boxes
    rewrite(tiny_coco[1], lambda d: d["images"][1].update(id=11))
    with pytest.raises(DetkitError) as error:
        COCODataset(*tiny_coco)
    assert str(error.value) == (f"COCO annotation file {tiny_coco[1]}: image id 11 appears twice in 'images' "
                                "(images[0] and images[1], field 'id'); image ids must be unique.")


@pytest.mark.parametrize("value,shown", [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf")])
def test_non_finite_bbox_is_an_error_naming_file_annotation_and_field(tiny_coco, value, shown):
    text = tiny_coco[1].read_text().replace('"bbox": [1, 2, 10, 5]', f'"bbox": [1, {value}, 10, 5]')
    tiny_coco[1].write_text(text)  # json.loads reads NaN / Infinity, as Python's json.dumps writes them
    with pytest.raises(DetkitError) as error:
        COCODataset(*tiny_coco)
    assert str(error.value) == (f"COCO annotation file {tiny_coco[1]}: annotation id 1 has a non-finite 'bbox' "
                                f"[1.0, {shown}, 10.0, 5.0].")


def test_non_finite_area_and_repeated_category_names_are_errors(tiny_coco):
    rewrite(tiny_coco[1], lambda d: d["annotations"][0].update(area=float("nan")))
    with pytest.raises(DetkitError, match="annotation id 1 has a non-finite 'area' nan"):
        COCODataset(*tiny_coco)
    rewrite(tiny_coco[1], lambda d: (d["annotations"][0].update(area=1.0), d["categories"][0].update(name="car")))
    with pytest.raises(DetkitError, match=r"categories \[3, 7\] share the 'name' 'car'"):
        COCODataset(*tiny_coco)


@pytest.mark.parametrize("field", ["height", "width"])
@pytest.mark.parametrize("value", [0, -20])
def test_image_with_non_positive_size_is_an_error_not_a_zero_division(tiny_coco, field, value):
    rewrite(tiny_coco[1], lambda d: d["images"][1].update({field: value}))
    with pytest.raises(DetkitError) as error:
        COCODataset(*tiny_coco)
    assert str(error.value) == (f"COCO annotation file {tiny_coco[1]}: image id 5 (y.jpg) has '{field}' {value}; "
                                "it must be a positive number of pixels.")
