"""A hand-made report: the two-class image of tests/evaluation/test_errors.py, drawn, with a short training log."""
from pathlib import Path

import numpy as np
import pytest

from detkit.report.report import ReportInputs
from tests.evaluation.test_errors import RESULTS, ground_truth


@pytest.fixture
def report_inputs(tmp_path: Path) -> ReportInputs:
    import cv2

    image = np.full((700, 700, 3), 90, np.uint8)
    for ann in ground_truth()["annotations"]:
        x, y, w, h = ann["bbox"]
        cv2.rectangle(image, (x + 5, y + 5), (x + w - 5, y + h - 5), (40, 180, 200), -1)
    cv2.imwrite(str(tmp_path / "7.png"), image)
    records = [{"iter": i, "total_loss": 2 / i, "loss_rpn_cls": 1 / i, "lr": 0.01 * min(1, i / 5)} for i in range(1, 30)]
    records += [{"iter": 15, "bbox/AP": 0.2, "bbox/AP50": 0.4}, {"iter": 29, "bbox/AP": 0.3, "bbox/AP50": 0.5}]
    return ReportInputs(ground_truth(), RESULTS, stages=[("training", records)], image_paths={7: tmp_path / "7.png"},
                        anchor_sizes=[32, 64, 128], anchor_ratios=[0.5, 1.0, 2.0], resize=(350, 700),
                        metrics={"bbox/AP": 0.3, "bbox/AP50": 0.5, "rpn/AR@100": 0.5, "store/AR@100": 0.25})
