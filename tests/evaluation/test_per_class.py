"""Per-class table and PR curves: the COCO evaluator's own precision array, not a re-implementation."""
import math

import numpy as np
import pytest

from detkit.evaluation.coco import evaluate_coco
from detkit.evaluation.per_class import class_report
from tests.evaluation.test_errors import RESULTS, ground_truth


def test_pr_curves_are_the_coco_evaluators_precision_array():
    from faster_coco_eval import COCO, COCOeval_faster

    gt = ground_truth()
    coco = COCO(gt)
    evaluator = COCOeval_faster(coco, coco.loadRes([dict(r) for r in RESULTS]), iouType="bbox",
                                print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    precision = np.asarray(evaluator.eval["precision"])  # [T, R, K, A, M]
    report = class_report(gt, RESULTS)
    np.testing.assert_array_equal(report.curves[0.5], precision[0, :, :, 0, -1].T)
    np.testing.assert_array_equal(report.curves[0.75], precision[5, :, :, 0, -1].T)
    metrics = evaluate_coco(gt, RESULTS)
    assert report.table["AP"].tolist() == pytest.approx([metrics["bbox/AP-cat"], metrics["bbox/AP-dog"]])
    # by hand (test_errors): cat 56/101 at IoU 0.5; VOC AP = area under the envelope: 1/3 * 1 + 1/3 * 2/3
    assert report.table["AP50"][0] == pytest.approx(56 / 101)
    assert report.table["VOC AP"][0] == pytest.approx(1 / 3 + 2 / 9)


def test_best_f1_threshold_is_the_score_where_f1_peaks():
    report = class_report(ground_truth(), RESULTS)
    # cat: after the 0.75 detection recall 2/3 at precision 2/3 -> F1 2/3 (the 0.9 one alone: 1/2)
    assert report.best_f1[0] == pytest.approx(2 / 3, abs=0.01)
    assert report.best_f1_threshold[0] == pytest.approx(0.75)


def test_a_class_without_ground_truth_is_nan_not_zero():
    gt = ground_truth()
    gt["categories"].append({"id": 3, "name": "bird"})
    report = class_report(gt, RESULTS)
    assert report.num_gt.tolist() == [3, 3, 0]
    assert math.isnan(report.table["AP"][2]) and np.isnan(report.curves[0.5][2]).all()
    assert math.isnan(report.best_f1_threshold[2])
    empty = class_report(gt, [])
    assert empty.table["AP"][0] == 0 and math.isnan(empty.table["AP"][2])
