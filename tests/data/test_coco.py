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
