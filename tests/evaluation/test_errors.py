"""The TIDE error breakdown and the confusion matrix on a hand-made image whose answers are worked out by hand."""
import pytest

from detkit.errors import DetkitError
from detkit.evaluation.confusion import confusion_matrix
from detkit.evaluation.errors import tide_errors

A, B, C, D, E, F = [0, 0, 100, 100], [200, 0, 100, 100], [0, 200, 100, 100], [200, 200, 100, 100], \
    [400, 0, 100, 100], [400, 200, 100, 100]
CAT, DOG = 1, 2


def ground_truth():
    boxes = [(A, CAT), (B, DOG), (C, CAT), (D, DOG), (E, CAT), (F, DOG)]
    return {"images": [{"id": 7, "width": 700, "height": 700, "file_name": "7.png"}],
            "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}],
            "annotations": [{"id": i + 1, "image_id": 7, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for i, (b, c) in enumerate(boxes)]}


def det(box, category, score):
    return {"image_id": 7, "category_id": category, "bbox": box, "score": score}


RESULTS = [
    det(A, CAT, 0.9),                   # true positive
    det([0, 0, 100, 90], CAT, 0.8),     # duplicate: IoU 0.9 with A, which the 0.9 detection matched
    det(E, CAT, 0.75),                  # true positive
    det(B, CAT, 0.7),                   # classification: B's box exactly, but B is a dog
    det([0, 200, 100, 30], CAT, 0.6),   # localisation: IoU 0.3 with C, a cat
    det([600, 600, 50, 50], DOG, 0.5),  # background: on nothing
    det(F, DOG, 0.4),                   # true positive
    det([200, 200, 100, 30], CAT, 0.3), # cls + loc: IoU 0.3 with D, a dog
]                                       # D: missed (no detection, no cls / loc error blames it)


def outcome(breakdown, score):
    return next(d["outcome"] for d in breakdown.detections if d["score"] == score)


def test_each_hand_made_error_gets_its_type():
    breakdown = tide_errors(ground_truth(), RESULTS)
    assert [outcome(breakdown, s) for s in (0.9, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3)] == \
        ["tp", "dupe", "tp", "cls", "loc", "bkg", "tp", "both"]
    assert breakdown.counts == {"cls": 1, "loc": 1, "both": 1, "dupe": 1, "bkg": 1, "miss": 1}
    assert [ground_truth()["annotations"][i]["bbox"] for i in breakdown.missed] == [D]
    assert breakdown.per_image[7]["miss"] == 1 and sum(breakdown.per_image[7].values()) == 6


def test_fixing_each_kind_gains_the_dap_worked_out_from_the_definition():
    # 101-point AP at IoU 0.5 (recall points 0, 0.01, ..., 1), by hand. cat: 3 boxes, detections T F T F F F
    # -> recall 1/3 at precision 1 (34 points), 2/3 at 2/3 (33 points): 56/101. dog: 3 boxes, F T -> 1/3 at 0.5: 17/101.
    breakdown = tide_errors(ground_truth(), RESULTS)
    assert breakdown.ap50 == pytest.approx((56 + 17) / 202)
    expected = {
        "dupe": (67 + 17) / 202,     # cat T T F F: 67 points at 1
        "cls": (56 + 56) / 202,      # the 0.7 cat becomes B's dog: dog T F T -> 34 at 1, 33 at 2/3
        "loc": (76.4 + 17) / 202,    # the 0.6 cat takes C: cat T F T F T -> 34 at 1, 33 at 2/3, 34 at 0.6
        "bkg": (56 + 34) / 202,      # dog T: 34 points at 1
        "both": (56 + 17) / 202,     # the cls + loc detection comes after the last true positive: no gain
        "miss": (56 + 25.5) / 202,   # dog has 2 positives left: F T -> 51 points at 0.5
    }
    for kind, fixed_ap in expected.items():
        assert breakdown.dap[kind] == pytest.approx(fixed_ap - breakdown.ap50), kind
    assert breakdown.dap["FP"] == pytest.approx((67 + 34) / 202 - breakdown.ap50)


def test_a_perfect_detector_has_no_errors_and_ap_one():
    results = [det(a["bbox"], a["category_id"], 0.9) for a in ground_truth()["annotations"]]
    breakdown = tide_errors(ground_truth(), results)
    assert breakdown.ap50 == pytest.approx(1.0)
    assert sum(breakdown.counts.values()) == 0 and all(v == pytest.approx(0) for v in breakdown.dap.values())


def test_crowd_boxes_are_neither_missed_nor_hit_as_errors():
    gt = ground_truth()
    gt["annotations"][3]["iscrowd"] = 1  # D
    breakdown = tide_errors(gt, RESULTS + [det(D, DOG, 0.2)])
    assert breakdown.counts["miss"] == 0
    assert all(d["score"] != 0.2 for d in breakdown.detections)


def test_confusion_matrix_of_the_hand_made_image():
    cm = confusion_matrix(ground_truth(), RESULTS)  # IoU 0.5, score 0.3
    assert cm.names == ["cat", "dog"]
    # rows: gt cat, gt dog, background; columns: detected cat, detected dog, missed
    assert cm.matrix.tolist() == [[2, 0, 1], [1, 1, 1], [3, 1, 0]]
    cm = confusion_matrix(ground_truth(), RESULTS, score_thresh=0.5)
    assert cm.matrix.tolist() == [[2, 0, 1], [1, 0, 2], [2, 1, 0]]
    assert cm.matrix[:2].sum(axis=1).tolist() == [3, 3]  # one-to-one: each box counted once


def test_results_that_do_not_fit_the_ground_truth_are_one_clear_error():
    with pytest.raises(DetkitError, match="image_id 99, not in the ground truth"):
        tide_errors(ground_truth(), [{**RESULTS[0], "image_id": 99}])
    with pytest.raises(DetkitError, match="category_id 5, not in the ground truth"):
        confusion_matrix(ground_truth(), [{**RESULTS[0], "category_id": 5}])


def test_no_detections_means_every_box_is_missed():
    breakdown = tide_errors(ground_truth(), [])
    assert breakdown.ap50 == 0 and breakdown.counts["miss"] == 6
    assert confusion_matrix(ground_truth(), []).matrix[:, -1].tolist() == [3, 3, 0]
