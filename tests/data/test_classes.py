"""One class list per run: from the config or the training set, applied to every split, stored with the weights."""
import json
import math
import shutil
import warnings
import xml.etree.ElementTree as ET

import cv2
import pytest
import torch
from torch import nn

from detkit.config import load_config
from detkit.data.classes import ClassList, trained_class_list
from detkit.recipes.common import build_train_and_test
from detkit.evaluation.predict import evaluate
from detkit.errors import DetkitError

from .conftest import BCCD, write_image

IMAGES = {"trainval": ["00003", "00004"], "test": ["00007", "00018"], "rbc_wbc": ["00007", "00018"],
          "with_platelets": ["00003"]}


@pytest.fixture(autouse=True)
def idle_opencv_pool():
    """Stop OpenCV's worker threads after a test that decoded images in this process: a DataLoader worker forked
    while they wait would hang in its own cv2.setNumThreads(1) (detkit.data.loader._worker_init)."""
    threads = cv2.getNumThreads()
    yield
    cv2.setNumThreads(1)
    cv2.setNumThreads(threads)


@pytest.fixture
def bccd_voc(tmp_path):
    """A VOC folder of four BCCD images: trainval 00003, 00004 (Platelets, RBC, WBC); test 00007, 00018 (RBC, WBC)."""
    if not (BCCD / "Annotations" / "BloodImage_00003.xml").is_file():
        pytest.skip(f"BCCD not found at {BCCD} (set DETKIT_BCCD)")
    root = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for split, numbers in IMAGES.items():
        names = [f"BloodImage_{n}" for n in numbers]
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            shutil.copy(BCCD / "Annotations" / f"{name}.xml", root / "Annotations")
            shutil.copy(BCCD / "JPEGImages" / f"{name}.jpg", root / "JPEGImages")
    return root


def voc_config(root, *overrides):
    return load_config(None, ["data.train.format=voc", "data.test.format=voc", f"data.root={root}",
                              "data.train.split=trainval", "data.test.split=test", *overrides])


def boxes_by_name(xml_path):
    """Ground truth read straight from a VOC file: name -> [[x1, y1, x2, y2] 0-based], independent of detkit."""
    found = {}
    for obj in ET.parse(xml_path).getroot().findall("object"):
        box = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        found.setdefault(obj.findtext("name").strip(), []).append([box[0] - 1, box[1] - 1, box[2], box[3]])
    return found


class ReplayDetector(nn.Module):
    """Returns the given per-image detections in order, as a model called on one image at a time would."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)

    def forward(self, images):
        return [self.outputs.pop(0) for _ in images]


def test_test_split_uses_the_training_class_list_so_exact_rbc_and_wbc_get_ap_1(bccd_voc):
    cfg = voc_config(bccd_voc)
    train_set, test_set = build_train_and_test(cfg)
    assert cfg.model.class_names == ["Platelets", "RBC", "WBC"] and cfg.model.category_ids == [1, 2, 3]
    assert test_set.classes == train_set.classes == ["Platelets", "RBC", "WBC"]
    outputs = []
    for name in test_set.names:  # the detector finds every test RBC and WBC box exactly, in the run's labels
        truth = boxes_by_name(bccd_voc / "Annotations" / f"{name}.xml")
        boxes = truth["RBC"] + truth["WBC"]
        labels = [2] * len(truth["RBC"]) + [3] * len(truth["WBC"])
        outputs.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels),
                        "scores": torch.linspace(0.9, 0.5, len(boxes))})
    metrics, results = evaluate(ReplayDetector(outputs), test_set, torch.device("cpu"), voc=True)
    assert metrics["bbox/AP-RBC"] == 1.0 and metrics["voc/AP-RBC"] == 1.0  # was 0.0 (test split said RBC = 1)
    assert metrics["bbox/AP-WBC"] == 1.0 and metrics["voc/AP-WBC"] == 1.0  # was "has no COCO category"
    assert math.isnan(metrics["bbox/AP-Platelets"]) and math.isnan(metrics["voc/AP-Platelets"])
    assert {r["category_id"] for r in results} == {2, 3}


def test_config_class_names_order_numbers_every_split(bccd_voc):
    cfg = voc_config(bccd_voc, "data.train.split=rbc_wbc", "model.class_names=[WBC,RBC]")
    train_set, test_set = build_train_and_test(cfg)
    assert cfg.model.class_names == ["WBC", "RBC"] and cfg.model.category_ids == [1, 2]
    for dataset in (train_set, test_set):
        assert dataset.classes == ["WBC", "RBC"]
        for index, name in enumerate(dataset.names):
            truth = boxes_by_name(bccd_voc / "Annotations" / f"{name}.xml")
            target = dataset.target(index)
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                assert box in truth[cfg.model.class_names[label - 1]]  # label 1 is WBC, 2 is RBC, as the config says


def test_a_class_in_the_data_but_not_in_the_list_is_an_error_or_dropped_by_a_key(bccd_voc):
    with pytest.raises(DetkitError, match=r"data.train \(.*split trainval\) has classes that are not in the run's "
                                          r"class list \['RBC', 'WBC'\]: 'Platelets' \(2 boxes, first in .*00003.jpg"):
        build_train_and_test(voc_config(bccd_voc, "model.class_names=[RBC,WBC]"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_set, _ = build_train_and_test(voc_config(bccd_voc, "model.class_names=[RBC,WBC]",
                                                       "data.unknown_classes=ignore"))
    assert any("dropped the boxes of classes not in the class list" in str(w.message) and "'Platelets' (2 boxes"
               in str(w.message) for w in caught)
    assert sum(len(r.labels) for r in train_set.records) == 15 + 1 + 11 + 1 and train_set.classes == ["RBC", "WBC"]
    # the test split may not hold a class the model does not know either
    with pytest.raises(DetkitError, match=r"data.test .* 'Platelets' \(1 boxes"):
        build_train_and_test(voc_config(bccd_voc, "data.train.split=rbc_wbc", "data.test.split=with_platelets"))


def test_num_classes_that_does_not_fit_the_class_list_is_an_error_naming_key_largest_label_and_count(bccd_voc):
    with pytest.raises(DetkitError) as error:  # before: IndexError "Target 3 is out of bounds" in training
        build_train_and_test(voc_config(bccd_voc, "model.num_classes=2"))
    assert str(error.value) == (f"model.num_classes is 2, but the training data ({bccd_voc} split trainval) has "
                                "labels up to 3 (3 classes: Platelets, RBC, WBC); set model.num_classes=3 or leave "
                                "it unset.")
    with pytest.raises(DetkitError, match="model.num_classes is 5, but the training data .* has labels up to 2"):
        build_train_and_test(voc_config(bccd_voc, "data.train.split=rbc_wbc", "model.num_classes=5"))
    with pytest.raises(DetkitError, match="model.num_classes is 3, but model.class_names has labels up to 2"):
        build_train_and_test(voc_config(bccd_voc, "model.num_classes=3", "model.class_names=[RBC,WBC]",
                                        "data.unknown_classes=ignore"))


def write_coco(folder, name, categories, annotations):
    write_image(folder / "a.jpg", 20, 30)
    path = folder / name
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
                                "categories": categories, "annotations": annotations}))
    return path


def test_coco_test_file_is_mapped_by_category_name_to_the_training_ids(tmp_path):
    write_coco(tmp_path, "train.json", [{"id": 7, "name": "kite"}, {"id": 3, "name": "car"}],
               [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 5, 5]},
                {"id": 2, "image_id": 1, "category_id": 3, "bbox": [2, 2, 5, 5]}])
    write_coco(tmp_path, "test.json", [{"id": 1, "name": "car"}, {"id": 2, "name": "kite"}, {"id": 9, "name": "bus"}],
               [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 2, 5, 5]}])
    cfg = coco_config(tmp_path, "train.json", "test.json")
    _, test_set = build_train_and_test(cfg)
    assert cfg.model.class_names == ["car", "kite"] and cfg.model.category_ids == [3, 7]
    assert test_set.target(0)["labels"].tolist() == [2]  # kite: label 2 in the run, id 2 in the test file
    gt = test_set.coco_gt()
    assert gt["categories"] == [{"id": 3, "name": "car"}, {"id": 7, "name": "kite"}]
    assert [a["category_id"] for a in gt["annotations"]] == [7]
    cfg = coco_config(tmp_path, "train.json", "train.json", "model.class_names=[kite,car]")
    train_set, _ = build_train_and_test(cfg)  # names from the config keep the training file's ids
    assert cfg.model.category_ids == [7, 3] and train_set.label_to_category_id == {1: 7, 2: 3}
    assert train_set.target(0)["labels"].tolist() == [1, 2]
    # per-class AP is named by category id, not by label order: exact kites only -> kite AP 1, car AP 0
    kite = train_set.target(0)["boxes"][:1]
    metrics, results = evaluate(ReplayDetector([{"boxes": kite, "labels": torch.tensor([1]),
                                                 "scores": torch.tensor([0.9])}]), train_set, torch.device("cpu"))
    assert metrics["bbox/AP-kite"] == 1.0 and metrics["bbox/AP-car"] == 0.0 and results[0]["category_id"] == 7
    with pytest.raises(DetkitError, match="model.class_names names 'bus', which the training data .*train.json"):
        build_train_and_test(coco_config(tmp_path, "train.json", "train.json", "model.class_names=[kite,bus]"))


def coco_config(root, train, test, *overrides):
    return load_config(None, ["data.train.format=coco", "data.test.format=coco", f"data.root={root}",
                              "data.train.split=null", "data.test.split=null", f"data.train.ann_file={train}",
                              f"data.test.ann_file={test}", *overrides])


def test_weights_class_list_wins_and_a_config_that_disagrees_is_an_error():
    stored = ClassList.make(["RBC", "WBC"], [4, 9])
    assert trained_class_list(None, None, None, stored, "w.pth") == stored
    assert trained_class_list(["RBC", "WBC"], None, 2, stored, "w.pth") == stored
    with pytest.raises(DetkitError, match=r"model.class_names is \['WBC', 'RBC'\], but w.pth was trained with "
                                          r"classes \['RBC', 'WBC'\]"):
        trained_class_list(["WBC", "RBC"], None, None, stored, "w.pth")
    with pytest.raises(DetkitError, match=r"model.category_ids is \[1, 2\], but w.pth was trained with category ids"):
        trained_class_list(None, [1, 2], None, stored, "w.pth")
    with pytest.raises(DetkitError, match="w.pth stores no class list and the config names none"):
        trained_class_list(None, None, None, None, "w.pth")
    assert trained_class_list(["a", "b"], None, None, None, "w.pth") == ClassList.make(["a", "b"], [1, 2])
    with pytest.raises(DetkitError, match="repeats the class name RBC"):
        ClassList.make(["RBC", "RBC"])
