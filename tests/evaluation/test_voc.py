import math

import pytest
import torch

from detkit.errors import DetkitError
from detkit.evaluation.voc import evaluate_voc, voc_ap

# Five detections of one class against 3 ground-truth boxes, best score first: TP, FP, TP, FP, FP.
#   cumulative TP 1, 1, 2, 2, 2   FP 0, 1, 1, 2, 3
#   recall    1/3, 1/3, 2/3, 2/3, 2/3
#   precision 1,   1/2, 2/3, 1/2, 2/5
RECALL = [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3]
PRECISION = [1.0, 1 / 2, 2 / 3, 1 / 2, 2 / 5]
# 11-point: thresholds 0, .1, .2, .3 see max precision 1; .4, .5, .6 see 2/3; .7 ... 1.0 see no point (0).
AP_07 = (4 * 1.0 + 3 * (2 / 3) + 4 * 0.0) / 11  # = 6/11
# Area: envelope 1 up to recall 1/3, 2/3 up to recall 2/3, 0 after: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0.
AP_AREA = 1 / 3 * 1.0 + 1 / 3 * (2 / 3)  # = 5/9


def det(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores)}


def target(boxes, labels, ignore=None):
    ignore = [False] * len(labels) if ignore is None else ignore
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "ignore": torch.tensor(ignore)}


def hand_case():
    """The TP, FP(duplicate), TP, FP(no overlap), FP(low IoU) sequence above, over two images."""
    targets = [target([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1]), target([[0, 0, 10, 10]], [1])]
    outputs = [
        det([[0, 0, 10, 10], [0, 0, 10, 10], [21, 40, 31, 50]], [1, 1, 1], [0.9, 0.8, 0.5]),
        det([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [0.7, 0.6]),
    ]
    return outputs, targets


def test_voc_ap_11_point_matches_hand_computation():
    assert voc_ap(RECALL, PRECISION, use_07_metric=True) == pytest.approx(AP_07)


def test_voc_ap_area_matches_hand_computation():
    assert voc_ap(RECALL, PRECISION, use_07_metric=False) == pytest.approx(AP_AREA)


@pytest.mark.parametrize("use_07_metric, expected", [(True, AP_07), (False, AP_AREA)])
def test_evaluate_voc_counts_duplicates_and_misses_as_false_positives(use_07_metric, expected):
    outputs, targets = hand_case()
    metrics = evaluate_voc(outputs, targets, num_classes=1, use_07_metric=use_07_metric, class_names=["RBC"])
    assert metrics["voc/AP-RBC"] == pytest.approx(expected)
    assert metrics["voc/mAP"] == pytest.approx(expected)


def test_detection_on_difficult_box_is_neither_tp_nor_fp():
    targets = [target([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], ignore=[False, True])]
    outputs = [det([[20, 20, 30, 30], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])]
    assert evaluate_voc(outputs, targets, num_classes=1)["voc/mAP"] == pytest.approx(1.0)
    # Missing a difficult box costs nothing; missing the same box unmarked halves the recall.
    unmarked = [target([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])]
    only_normal = [det([[0, 0, 10, 10]], [1], [0.8])]
    assert evaluate_voc(only_normal, unmarked, num_classes=1)["voc/mAP"] == pytest.approx(0.5)
    assert evaluate_voc(only_normal, targets, num_classes=1)["voc/mAP"] == pytest.approx(1.0)


def test_iou_uses_continuous_coordinates_without_plus_one():
    # IoU is 100 / 200 = 0.5 exactly, not above the 0.5 threshold; the devkit's "+1" would make it 121 / 231.
    outputs = [det([[0, 0, 10, 10]], [1], [0.9])]
    targets = [target([[0, 0, 10, 20]], [1])]
    assert evaluate_voc(outputs, targets, num_classes=1)["voc/mAP"] == 0.0
    assert evaluate_voc(outputs, targets, num_classes=1, iou_thresh=0.49)["voc/mAP"] == pytest.approx(1.0)


def test_class_without_ground_truth_is_nan_and_left_out_of_map():
    outputs = [det([[0, 0, 10, 10], [30, 30, 40, 40]], [1, 2], [0.9, 0.9])]
    targets = [target([[0, 0, 10, 10]], [1])]
    metrics = evaluate_voc(outputs, targets, num_classes=2)
    assert math.isnan(metrics["voc/AP-2"])
    assert metrics["voc/mAP"] == pytest.approx(1.0)


def test_bad_inputs_name_the_image_and_key():
    with pytest.raises(DetkitError, match="image index 1 has no 'scores'"):
        evaluate_voc([det([], [], []), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}],
                     [target([], []), target([], [])], num_classes=1)
    with pytest.raises(DetkitError, match="class_names has 2 names"):
        evaluate_voc([], [], num_classes=1, class_names=["a", "b"])
