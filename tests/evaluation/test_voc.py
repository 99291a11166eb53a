import math

import numpy as np
import pytest
import torch

from detkit.box_ops import box_iou
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


def reference_voc(outputs, targets, num_classes, iou_thresh, use_07_metric):
    """The VOC devkit loop written plainly: one IoU row per detection, best score first (stable)."""
    metrics = {}
    for label in range(1, num_classes + 1):
        gt = [(t["boxes"][t["labels"] == label].double(), t["ignore"][t["labels"] == label].tolist()) for t in targets]
        num_positives = sum(flags.count(False) for _, flags in gt)
        if num_positives == 0:
            metrics[f"voc/AP-{label}"] = math.nan
            continue
        dets = [(score, i, box) for i, o in enumerate(outputs)
                for box, score in zip(o["boxes"][o["labels"] == label].double(), o["scores"][o["labels"] == label].tolist())]
        dets.sort(key=lambda d: -d[0])
        taken = [[False] * len(boxes) for boxes, _ in gt]
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for rank, (_, i, box) in enumerate(dets):
            boxes, flags = gt[i]
            if len(boxes) == 0:
                fp[rank] = 1
                continue
            best_iou, best = box_iou(box[None], boxes)[0].max(dim=0)
            if float(best_iou) <= iou_thresh:
                fp[rank] = 1
            elif flags[int(best)]:
                continue
            elif not taken[i][int(best)]:
                tp[rank], taken[i][int(best)] = 1, True
            else:
                fp[rank] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        metrics[f"voc/AP-{label}"] = voc_ap(tp / num_positives, precision, use_07_metric)
    present = [v for v in metrics.values() if not math.isnan(v)]
    return {"voc/mAP": float(np.mean(present)) if present else math.nan, **metrics}


def random_case(num_images, num_labels, gen):
    """Boxes on a coarse integer grid (IoU ties, IoU exactly at thresholds, empty boxes), tied scores, difficult flags."""
    def boxes(n):
        corners = torch.randint(0, 8, (n, 2), generator=gen)
        sizes = torch.randint(0, 7, (n, 2), generator=gen)
        return torch.cat([corners, corners + sizes], dim=1).float()

    outputs, targets = [], []
    for _ in range(num_images):
        g, d = int(torch.randint(0, 5, (1,), generator=gen)), int(torch.randint(0, 5, (1,), generator=gen))
        gt_boxes, gt_labels = boxes(g), torch.randint(1, num_labels + 1, (g,), generator=gen)
        if g and torch.rand(1, generator=gen) < 0.3:  # a duplicate box: equal IoU, the first one must win
            gt_boxes, gt_labels, g = torch.cat([gt_boxes, gt_boxes[:1]]), torch.cat([gt_labels, gt_labels[:1]]), g + 1
        targets.append({"boxes": gt_boxes, "labels": gt_labels, "ignore": torch.rand(g, generator=gen) < 0.2})
        # Hits (ground truth moved by at most one pixel, sometimes twice) and random boxes.
        hits = torch.cat([gt_boxes, gt_boxes[: g // 2]])
        hits = hits + torch.randint(-1, 2, hits.shape, generator=gen)
        hit_labels = torch.cat([gt_labels, gt_labels[: g // 2]])
        outputs.append({"boxes": torch.cat([hits, boxes(d)]),
                        "labels": torch.cat([hit_labels, torch.randint(1, num_labels + 1, (d,), generator=gen)]),
                        "scores": torch.randint(1, 6, (len(hits) + d,), generator=gen).float() / 5})
    return outputs, targets


@pytest.mark.parametrize("iou_thresh, use_07_metric", [(0.5, False), (0.5, True), (0.25, False)])
def test_evaluate_voc_equals_the_plain_devkit_loop_exactly(iou_thresh, use_07_metric):
    outputs, targets = random_case(num_images=80, num_labels=4, gen=torch.Generator().manual_seed(3))
    # Label 5 never occurs: its AP is nan in both.
    metrics = evaluate_voc(outputs, targets, num_classes=5, iou_thresh=iou_thresh, use_07_metric=use_07_metric)
    expected = reference_voc(outputs, targets, 5, iou_thresh, use_07_metric)
    assert sum(len(t["boxes"]) == 0 for t in targets) > 5 and sum(bool(t["ignore"].any()) for t in targets) > 5
    assert 0.05 < expected["voc/mAP"] < 0.95
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == value or (math.isnan(value) and math.isnan(metrics[key])), key
