"""report.html: every section present, self-contained, and bad input shown as a marked empty section."""
import re

import pytest

from detkit.errors import DetkitError
from detkit.report.report import write_report

FIGURES = ("training_curves", "ap_per_class", "pr_curves", "confusion_matrix", "error_breakdown", "box_statistics",
           "worst_images")


def test_report_is_one_self_contained_page_with_every_figure(report_inputs, tmp_path):
    page = write_report(report_inputs, tmp_path / "out")
    html = page.read_text()
    assert page.name == "report.html"
    for section in ("summary", "training", "per-class", "pr", "confusion", "errors", "boxes", "worst"):
        assert f'id="{section}"' in html, section
    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    assert not re.search(r"(src|href)=\"(http|//|file:)", html) and "<script" not in html  # opens from the disk
    assert "Nothing to show" not in html
    for name in FIGURES:
        assert (tmp_path / "out" / "report_figures" / f"{name}.png").stat().st_size > 1000, name
    assert "<td>cat</td><td>3</td><td>" in html  # the per-class table: class, boxes, AP...
    assert "<th>AR@100</th></tr></thead><tbody><tr><td>50.0</td>" in html  # the RPN's recall
    assert "<th>AR@100</th></tr></thead><tbody><tr><td>25.0</td>" in html  # the proposal store's


def test_empty_detections_mark_the_sections_that_need_them(report_inputs, tmp_path):
    report_inputs.image_paths = {}  # the worst images are tested above
    report_inputs.results = []
    html = write_report(report_inputs, tmp_path / "out").read_text()
    assert html.count('class="empty">Nothing to show: the detections file holds no detections') >= 3
    assert not (tmp_path / "out" / "report_figures" / "pr_curves.png").exists()
    assert "<td>missed</td><td>6</td>" in html  # every box missed


def test_a_class_without_ground_truth_is_named_not_plotted_as_zero(report_inputs, tmp_path):
    report_inputs.image_paths = {}  # the worst images are tested above
    report_inputs.ground_truth["categories"].append({"id": 3, "name": "bird"})
    html = write_report(report_inputs, tmp_path / "out").read_text()
    assert "no ground truth in this split for 1 class(es): bird" in html
    assert "<td>bird</td><td>0</td><td>-</td>" in html


def test_a_run_without_metrics_jsonl_says_so(report_inputs, tmp_path):
    report_inputs.image_paths = {}  # the worst images are tested above
    report_inputs.stages = []
    html = write_report(report_inputs, tmp_path / "out").read_text()
    assert "Nothing to show: the run folder and its stage folders hold no metrics.jsonl" in html
    assert not (tmp_path / "out" / "report_figures" / "training_curves.png").exists()


@pytest.mark.parametrize("key, value, message", [("image_id", 99, "image_id 99, not in the ground truth"),
                                                 ("category_id", 5, "category_id 5, not in the ground truth")])
def test_detections_not_in_the_ground_truth_are_refused(report_inputs, tmp_path, key, value, message):
    report_inputs.image_paths = {}  # the worst images are tested above
    report_inputs.results = [*report_inputs.results, {**report_inputs.results[0], key: value}]
    with pytest.raises(DetkitError, match=message):
        write_report(report_inputs, tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_report_off_by_config_writes_nothing(tmp_path):
    from detkit.config import load_config
    from detkit.report.run import report_run

    cfg = load_config("configs/demo.yaml", ["test.report=false"])
    assert report_run(cfg, dataset=None, results=[], metrics={}, out_dir=tmp_path) is None
    assert list(tmp_path.iterdir()) == []
