"""tools/analyze.py on detections + ground truth files: a report, or one line for bad input (no traceback)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.evaluation.test_errors import RESULTS, ground_truth

REPO = Path(__file__).resolve().parents[2]


def analyze(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "tools" / "analyze.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_detections_not_in_the_ground_truth_are_one_line_without_traceback(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(ground_truth()))
    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps([*RESULTS, {**RESULTS[0], "category_id": 42}]))
    proc = analyze("--detections", stray, "--gt", gt, "--out", tmp_path / "bad", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "category_id 42, not in the ground truth" in lines[0]
    assert not (tmp_path / "bad" / "report.html").exists()


def test_detections_files_empty_or_malformed(tmp_path):
    import pytest

    from detkit.errors import DetkitError
    from detkit.report.run import read_results

    (tmp_path / "empty.json").write_text("[]")
    assert read_results(tmp_path / "empty.json") == []  # a report with marked empty sections (test_report.py)
    (tmp_path / "dict.json").write_text('{"image_id": 1}')
    with pytest.raises(DetkitError, match="must hold a JSON list of COCO results"):
        read_results(tmp_path / "dict.json")
    (tmp_path / "cut.json").write_text('[{"image_id": 1,')
    with pytest.raises(DetkitError, match="is not valid JSON"):
        read_results(tmp_path / "cut.json")


def test_a_folder_that_is_no_run_is_one_clear_error(tmp_path):
    import pytest

    from detkit.errors import DetkitError
    from detkit.report.run import load_run

    with pytest.raises(DetkitError, match="has no config.yaml"):
        load_run(tmp_path)
    with pytest.raises(DetkitError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "config.yaml").write_text("output_dir: x\n")
    with pytest.raises(DetkitError, match="has no detections_test.json or detections.json"):
        load_run(tmp_path)
