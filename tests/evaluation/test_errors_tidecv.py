"""detkit's TIDE breakdown against the authors' tidecv as an oracle (skips without it: tidecv is no dependency; it
pulls opencv-python, which would shadow the contrib OpenCV build, so install it with --no-deps into a side folder)."""
import json

import numpy as np
import pytest

from detkit.evaluation.errors import tide_errors
from tests.evaluation.test_errors import RESULTS, ground_truth

SHORT = {"Cls": "cls", "Loc": "loc", "Both": "both", "Dupe": "dupe", "Bkg": "bkg", "Miss": "miss"}


def random_case(seed=0, images=30, classes=3):
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(classes)]}
    results = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "width": 400, "height": 400, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.integers(0, 6)):
            x, y, w, h = (float(v) for v in (*rng.uniform(0, 300, 2), *rng.uniform(10, 100, 2)))
            category = int(rng.integers(1, classes + 1))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": category,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(rng.integers(0, 3)):  # jittered copies, some of the wrong class
                jitter = rng.normal(0, 0.25, 4) * [w, h, w, h]
                results.append({"image_id": image_id, "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]),
                                                               max(1.0, h + jitter[3])],
                                "category_id": category if rng.random() < 0.8 else int(rng.integers(1, classes + 1)),
                                "score": float(rng.random())})
        for _ in range(rng.integers(0, 3)):  # boxes on nothing in particular
            results.append({"image_id": image_id, "category_id": int(rng.integers(1, classes + 1)),
                            "bbox": [*map(float, rng.uniform(0, 350, 2)), 30.0, 30.0], "score": float(rng.random())})
    return gt, results


@pytest.mark.parametrize("case", ["hand-made", 0, 1, 2])
def test_counts_and_dap_equal_tidecvs(case, tmp_path):
    tidecv = pytest.importorskip("tidecv", reason="tidecv is not installed (an optional test oracle)")
    gt, results = (ground_truth(), RESULTS) if case == "hand-made" else random_case(seed=case, images=60)
    boxes_as_polygons = json.loads(json.dumps(gt))  # tidecv's COCO reader wants a segmentation
    for ann in boxes_as_polygons["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    (tmp_path / "gt.json").write_text(json.dumps(boxes_as_polygons))
    (tmp_path / "results.json").write_text(json.dumps(results))
    tide = tidecv.TIDE()
    tide.evaluate(tidecv.datasets.COCO(str(tmp_path / "gt.json")),
                  tidecv.datasets.COCOResult(str(tmp_path / "results.json")), mode=tidecv.TIDE.BOX, name="run")
    oracle, run = tide.get_all_errors(), tide.runs["run"]
    ours = tide_errors(gt, results)
    assert 100 * ours.ap50 == pytest.approx(run.ap, abs=1e-6)
    assert {SHORT[k.short_name]: v for k, v in run.count_errors().items()} == ours.counts
    for name, dap in oracle["main"]["run"].items():
        assert 100 * max(ours.dap[SHORT[name]], 0) == pytest.approx(dap, abs=1e-6), name  # tidecv clamps at 0
    special = oracle["special"]["run"]
    assert 100 * ours.dap["FP"] == pytest.approx(special["FalsePos"], abs=1e-6)
    assert 100 * ours.dap["FN"] == pytest.approx(special["FalseNeg"], abs=1e-6)
