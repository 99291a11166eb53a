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


def test_match_at_exactly_iou_half_as_the_matlab_devkit():
    # VOC file boxes (1-based inclusive): ground truth (1, 1, 10, 20), detection (1, 1, 10, 10). The devkit
    # (VOCevaldet.m): iw = 10 - 1 + 1 = 10, ih = 10 - 1 + 1 = 10, ua = 10 * 10 + 10 * 20 - 100 = 200,
    # ov = 100 / 200 = 0.5 and ovmax >= minoverlap (0.5): a true positive, AP 1. detkit's loader makes them
    # (0, 0, 10, 20) and (0, 0, 10, 10): intersection 100, union 200, the same 0.5, matched.
    outputs = [det([[0, 0, 10, 10]], [1], [0.9])]
    targets = [target([[0, 0, 10, 20]], [1])]
    for use_07_metric in (False, True):
        assert evaluate_voc(outputs, targets, num_classes=1, use_07_metric=use_07_metric)["voc/mAP"] == 1.0
    assert evaluate_voc(outputs, targets, num_classes=1, iou_thresh=0.51)["voc/mAP"] == 0.0
    # File boxes (1, 1, 2, 2) and (2, 2, 3, 3): iw = ih = 2 - 2 + 1 = 1, ua = 4 + 4 - 1 = 7, ov = 1 / 7: unmatched at
    # 0.5, matched at 1 / 7 exactly (continuous (0, 0, 2, 2) and (1, 1, 3, 3): 1 / 7 too).
    outputs, targets = [det([[1, 1, 3, 3]], [1], [0.9])], [target([[0, 0, 2, 2]], [1])]
    assert evaluate_voc(outputs, targets, num_classes=1)["voc/mAP"] == 0.0
    assert evaluate_voc(outputs, targets, num_classes=1, iou_thresh=1 / 7)["voc/mAP"] == 1.0


def test_perfect_detector_scores_exactly_one():
    # 11 ground-truth boxes found with falling scores: every 11-point threshold sees precision 1; 11 * (1 / 11)
    # summed in turn gives 1.0000000000000002, summing first gives 1.0.
    boxes = [[10.0 * k, 0.0, 10.0 * k + 8, 8.0] for k in range(11)]
    outputs = [det(boxes, [1] * 11, [1.0 - k / 20 for k in range(11)])]
    targets = [target(boxes, [1] * 11)]
    assert evaluate_voc(outputs, targets, num_classes=1, use_07_metric=True)["voc/mAP"] == 1.0
    assert evaluate_voc(outputs, targets, num_classes=1, use_07_metric=False)["voc/mAP"] == 1.0
    assert voc_ap([1.0], [1.0], use_07_metric=True) == 1.0


def test_11_point_threshold_at_exactly_three_tenths():
    # Recall 3/10 at precision 1, then nothing: thresholds 0, 0.1, 0.2, 0.3 see precision 1, so AP = 4 / 11.
    # np.linspace(0, 1, 11)[3] is 0.30000000000000004, which a recall of exactly 0.3 would miss (3 / 11).
    assert voc_ap([0.3], [1.0], use_07_metric=True) == 4 / 11


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


def devkit_voc(outputs, targets, num_classes, iou_thresh, use_07_metric):
    """VOCevaldet.m and VOCap.m transcribed, on VOC file boxes: 1-based inclusive pixels with +1 areas, a detection's
    overlap with each ground-truth box only where iw > 0 and ih > 0, ovmax >= minoverlap, the first best box kept."""
    def to_file(boxes):  # detkit's continuous (x1, y1, x2, y2) back to the file's (xmin, ymin, xmax, ymax)
        return [[b[0] + 1, b[1] + 1, b[2], b[3]] for b in boxes.tolist()]

    metrics = {}
    for label in range(1, num_classes + 1):
        gt = [(to_file(t["boxes"][t["labels"] == label]), t["ignore"][t["labels"] == label].tolist()) for t in targets]
        num_positives = sum(flags.count(False) for _, flags in gt)
        if num_positives == 0:
            metrics[f"voc/AP-{label}"] = math.nan
            continue
        dets = [(score, i, bb) for i, o in enumerate(outputs) for bb, score in
                zip(to_file(o["boxes"][o["labels"] == label]), o["scores"][o["labels"] == label].tolist())]
        dets.sort(key=lambda d: -d[0])  # MATLAB's sort(-confidence) is stable
        taken = [[False] * len(boxes) for boxes, _ in gt]
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for d, (_, i, bb) in enumerate(dets):
            ovmax, jmax = -math.inf, -1
            for j, bbgt in enumerate(gt[i][0]):
                iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1
                ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1
                if iw > 0 and ih > 0:
                    ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1)
                          - iw * ih)
                    ov = iw * ih / ua
                    if ov > ovmax:
                        ovmax, jmax = ov, j
            if ovmax >= iou_thresh:
                if gt[i][1][jmax]:
                    pass  # difficult: neither
                elif not taken[i][jmax]:
                    tp[d], taken[i][jmax] = 1, True
                else:
                    fp[d] = 1
            else:
                fp[d] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / num_positives
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if use_07_metric:
            ap = 0.0
            for t in range(11):  # 0:0.1:1, as exact tenths
                p = prec[rec >= t / 10]
                ap += (p.max() if p.size else 0.0) / 11
        else:
            mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
            for k in range(len(mpre) - 2, -1, -1):
                mpre[k] = max(mpre[k], mpre[k + 1])
            ap = sum((mrec[k] - mrec[k - 1]) * mpre[k] for k in range(1, len(mrec)) if mrec[k] != mrec[k - 1])
        metrics[f"voc/AP-{label}"] = ap
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
def test_evaluate_voc_equals_the_matlab_devkit_arithmetic(iou_thresh, use_07_metric):
    outputs, targets = random_case(num_images=80, num_labels=4, gen=torch.Generator().manual_seed(3))
    # Label 5 never occurs: its AP is nan in both.
    metrics = evaluate_voc(outputs, targets, num_classes=5, iou_thresh=iou_thresh, use_07_metric=use_07_metric)
    expected = devkit_voc(outputs, targets, 5, iou_thresh, use_07_metric)
    assert sum(len(t["boxes"]) == 0 for t in targets) > 5 and sum(bool(t["ignore"].any()) for t in targets) > 5
    assert 0.05 < expected["voc/mAP"] < 0.95
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
