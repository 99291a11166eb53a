import copy
import importlib.util
import math

import pytest
import torch

from detkit.errors import DetkitError
from detkit.evaluation.coco import coco_stats, detections_to_coco, evaluate_coco, format_coco_table

LABEL_TO_CATEGORY = {1: 3, 2: 7, 3: 9}


def small_gt() -> dict:
    """Six 200x200 images with small, medium and large boxes of three categories, plus one crowd box."""
    gen = torch.Generator().manual_seed(0)
    images, annotations = [], []
    for image_id in range(1, 7):
        images.append({"id": image_id, "width": 200, "height": 200, "file_name": f"{image_id}.jpg"})
        for size in (20.0, 50.0, 120.0):
            x, y = (torch.rand(2, generator=gen) * (190 - size)).tolist()
            category = [3, 7, 9][int(torch.randint(3, (1,), generator=gen))]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                 "bbox": [x, y, size, size * 0.8], "area": size * size * 0.8, "iscrowd": 0}
            )
    annotations.append(
        {"id": len(annotations) + 1, "image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 100.0, 100.0],
         "area": 10000.0, "iscrowd": 1}
    )
    categories = [{"id": 3, "name": "RBC"}, {"id": 7, "name": "WBC"}, {"id": 9, "name": "Platelets"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def noisy_results(gt: dict) -> list[dict]:
    """Seeded detections: jittered copies of each box (some duplicated or mislabelled) and random false positives."""
    gen = torch.Generator().manual_seed(1)
    results = []
    for ann in gt["annotations"]:
        for _ in range(2):
            jitter = (torch.randn(4, generator=gen) * 4).tolist()
            category = ann["category_id"] if torch.rand(1, generator=gen) > 0.2 else 7
            box = [ann["bbox"][0] + jitter[0], ann["bbox"][1] + jitter[1],
                   max(ann["bbox"][2] + jitter[2], 2.0), max(ann["bbox"][3] + jitter[3], 2.0)]
            results.append({"image_id": ann["image_id"], "category_id": category, "bbox": box,
                            "score": float(torch.rand(1, generator=gen))})
    for image in gt["images"]:
        for _ in range(5):
            x, y, w, h = (torch.rand(4, generator=gen) * torch.tensor([150.0, 150.0, 60.0, 60.0]) + 1).tolist()
            category = [3, 7, 9][int(torch.randint(3, (1,), generator=gen))]
            results.append({"image_id": image["id"], "category_id": category, "bbox": [x, y, w, h],
                            "score": float(torch.rand(1, generator=gen))})
    return results


def perfect_outputs(gt: dict) -> tuple[list[dict], list[int]]:
    category_to_label = {c: label for label, c in LABEL_TO_CATEGORY.items()}
    outputs, image_ids = [], []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns])
        labels = torch.tensor([category_to_label[a["category_id"]] for a in anns])
        outputs.append({"boxes": boxes, "labels": labels, "scores": torch.linspace(0.9, 0.5, len(anns))})
        image_ids.append(image["id"])
    return outputs, image_ids


@pytest.mark.skipif(importlib.util.find_spec("faster_coco_eval") is None, reason="faster-coco-eval not installed")
def test_faster_coco_eval_matches_pycocotools_on_all_12_stats():
    gt = small_gt()
    results = noisy_results(gt)
    fast = coco_stats(gt, results, backend="faster_coco_eval")
    reference = coco_stats(gt, results, backend="pycocotools")
    assert 0.05 < reference[0] < 0.95  # a non-trivial case, not all zeros or ones
    assert fast == pytest.approx(reference, abs=1e-6)


@pytest.mark.parametrize("backend", ["auto", "pycocotools"])
def test_perfect_detections_give_ap_one(backend):
    gt = small_gt()
    outputs, image_ids = perfect_outputs(gt)
    metrics = evaluate_coco(gt, detections_to_coco(outputs, image_ids, LABEL_TO_CATEGORY), backend=backend)
    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl", "bbox/AP-RBC",
                "bbox/AP-WBC", "bbox/AP-Platelets"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-9), key


def test_per_class_ap_drops_only_for_the_missed_class():
    gt = small_gt()
    outputs, image_ids = perfect_outputs(gt)
    for output in outputs:  # drop every WBC (label 2) detection
        keep = output["labels"] != 2
        output.update({k: v[keep] for k, v in output.items()})
    metrics = evaluate_coco(gt, detections_to_coco(outputs, image_ids, LABEL_TO_CATEGORY),
                            class_names=["rbc", "wbc", "plt"])
    assert metrics["bbox/AP-wbc"] == 0.0
    assert metrics["bbox/AP-rbc"] == pytest.approx(1.0)
    assert metrics["bbox/AP"] == pytest.approx(2 / 3)


def test_empty_results_give_zeros():
    metrics = evaluate_coco(small_gt(), [])
    assert set(metrics) >= {"bbox/AP", "bbox/AR100", "bbox/AP-RBC"}
    assert all(v == 0.0 for v in metrics.values())


def test_detections_to_coco_converts_xyxy_to_xywh_and_maps_categories():
    output = {"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0]]), "labels": torch.tensor([2]),
              "scores": torch.tensor([0.5])}
    (result,) = detections_to_coco([output], [42], LABEL_TO_CATEGORY)
    assert result == {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.5}


def test_bad_inputs_name_what_is_wrong():
    output = {"boxes": torch.zeros(1, 4), "labels": torch.tensor([5]), "scores": torch.ones(1)}
    with pytest.raises(DetkitError, match="label 5 in image index 0"):
        detections_to_coco([output], [1], LABEL_TO_CATEGORY)
    with pytest.raises(DetkitError, match="image_id 99"):
        evaluate_coco(small_gt(), [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(DetkitError, match="backend 'detectron'"):
        evaluate_coco(small_gt(), [], backend="detectron")


@pytest.mark.parametrize("backend", ["auto", "pycocotools"])
def test_library_output_is_silenced_and_table_lists_classes(capsys, backend):
    gt = small_gt()
    metrics = evaluate_coco(gt, noisy_results(gt), backend=backend)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    table = format_coco_table(metrics)
    assert "AP50" in table and "Platelets" in table
    assert f"{100 * metrics['bbox/AP']:.1f}" in table
    assert not any(math.isnan(v) for v in metrics.values())


def annotation(image_id, category_id, side, iscrowd=0):
    return {"image_id": image_id, "category_id": category_id, "bbox": [10.0, 10.0, side, side],
            "area": side * side, "iscrowd": iscrowd}


def sparse_gt() -> dict:
    """No small object (only a crowd one), no WBC (only a crowd one), Platelets only on an image not in the set."""
    annotations = [annotation(1, 3, 50.0), annotation(2, 3, 120.0), annotation(2, 7, 20.0, iscrowd=1),
                   annotation(9, 9, 20.0)]
    images = [{"id": i, "width": 200, "height": 200} for i in (1, 2)]
    categories = [{"id": 3, "name": "RBC"}, {"id": 7, "name": "WBC"}, {"id": 9, "name": "Platelets"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def boundary_gt() -> dict:
    """One box of area exactly 32**2: COCOeval counts it as both small and medium, not large."""
    return {"images": [{"id": 1, "width": 200, "height": 200}], "annotations": [annotation(1, 3, 32.0)],
            "categories": [{"id": 3, "name": "RBC"}, {"id": 7, "name": "WBC"}]}


def a_miss(gt: dict) -> list[dict]:
    """One detection far from every ground-truth box: it matches nothing."""
    return [{"image_id": gt["images"][0]["id"], "category_id": 3, "bbox": [500.0, 500.0, 5.0, 5.0], "score": 0.5}]


def test_empty_results_are_nan_where_there_is_no_ground_truth():
    metrics = evaluate_coco(sparse_gt(), [])
    nan_keys = {key for key, value in metrics.items() if math.isnan(value)}
    assert nan_keys == {"bbox/APs", "bbox/AP-WBC", "bbox/AP-Platelets"}
    assert all(value == 0.0 for key, value in metrics.items() if key not in nan_keys)
    metrics = evaluate_coco(boundary_gt(), [])
    assert {key for key, value in metrics.items() if math.isnan(value)} == {"bbox/APl", "bbox/AP-WBC"}


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
@pytest.mark.parametrize("make_gt", [sparse_gt, boundary_gt, small_gt])
def test_empty_results_match_an_evaluation_where_nothing_matches(make_gt, backend):
    if backend == "faster_coco_eval" and importlib.util.find_spec("faster_coco_eval") is None:
        pytest.skip("faster-coco-eval not installed")
    gt = make_gt()
    empty = evaluate_coco(gt, [], backend=backend)
    missed = evaluate_coco(gt, a_miss(gt), backend=backend)
    assert empty.keys() == missed.keys()
    for key in empty:
        assert empty[key] == missed[key] or (math.isnan(empty[key]) and math.isnan(missed[key])), key


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_evaluation_leaves_the_callers_ground_truth_and_results_untouched(backend):
    if backend == "faster_coco_eval" and importlib.util.find_spec("faster_coco_eval") is None:
        pytest.skip("faster-coco-eval not installed")
    gt = small_gt()
    for ann in gt["annotations"][:4]:  # optional fields the evaluator fills in
        del ann["id"], ann["area"], ann["iscrowd"]
    gt["annotations"][5]["segmentation"] = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    gt["info"] = {"year": 2017}
    results = noisy_results(gt)
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    evaluate_coco(gt, results, backend=backend)
    evaluate_coco(gt, [], backend=backend)
    coco_stats(gt, results, backend=backend)
    assert gt == gt_before
    assert results == results_before
