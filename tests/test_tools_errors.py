"""Bad data and bad configs through the command-line tools: one line on stderr, exit status 2, no traceback."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from tests.test_tools import REPO, run_tool, run_tool_here

BCCD = os.environ.get("DETKIT_BCCD", str(REPO.parent / "shared" / "data" / "BCCD"))


def assert_one_line_error(proc, *expected: str) -> None:
    tool = os.path.basename(proc.args[1])
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{tool}: error: ")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    for text in expected:
        assert text in errors[0], errors[0]


def test_train_rejects_a_class_count_below_the_data_labels_before_training(tmp_path):
    if not os.path.isdir(os.path.join(BCCD, "Annotations")):
        pytest.skip(f"BCCD not found at {BCCD} (set DETKIT_BCCD)")
    proc = run_tool_here("train.py", str(REPO / "configs" / "bccd" / "faster_rcnn_r18_fpn.yaml"),
                         "model.num_classes=2", f"data.root={BCCD}", f"output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(proc, "model.num_classes is 2, but the training data", "has labels up to 3",
                          "(3 classes: Platelets, RBC, WBC)")
    assert not (tmp_path / "run" / "last.pth").exists()


def test_train_rejects_bad_numbers_and_bad_annotations(tmp_path):
    proc = run_tool_here("train.py", str(REPO / "configs" / "demo.yaml"), "solver.weight_decay=heavy", cwd=tmp_path)
    assert_one_line_error(proc, "'solver.weight_decay' in the command line must be a number, got 'heavy'")
    (tmp_path / "images").mkdir()
    image = {"file_name": "a.jpg", "height": 20, "width": 30}
    (tmp_path / "ann.json").write_text(json.dumps({"images": [{"id": 1, **image}, {"id": 1, **image}],
                                                   "categories": [{"id": 1, "name": "a"}], "annotations": []}))
    proc = run_tool_here("train.py", str(REPO / "configs" / "demo.yaml"), "data.train.format=coco",
                         f"data.train.root={tmp_path}", "data.train.split=images", "data.train.ann_file=ann.json",
                         f"output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(proc, "ann.json: image id 1 appears twice in 'images'")


def test_eval_and_infer_reject_weights_without_a_class_list(tmp_path):
    torch.save({"backbone.weight": torch.zeros(1)}, tmp_path / "bare.pth")
    recipe = str(REPO / "configs" / "demo.yaml")
    proc = run_tool("eval.py", recipe, "--weights", str(tmp_path / "bare.pth"), f"output_dir={tmp_path}",
                    cwd=tmp_path, check=False)
    assert_one_line_error(proc, "bare.pth stores no class list and the config names none (model.class_names)")
    proc = run_tool_here("eval.py", recipe, "--weights", str(tmp_path / "missing.pth"), f"output_dir={tmp_path}",
                         cwd=tmp_path)
    assert_one_line_error(proc, "missing.pth does not exist")
    cv2.imwrite(str(tmp_path / "x.jpg"), np.zeros((8, 8, 3), np.uint8))  # a real input: the weights are at fault
    proc = run_tool_here("infer.py", str(tmp_path / "x.jpg"), "--config", recipe, "--weights",
                         str(tmp_path / "bare.pth"), cwd=tmp_path)
    assert_one_line_error(proc, "bare.pth stores no class list")
