"""tools/train.py, eval.py and infer.py on Fast R-CNN: proposals first, then train, evaluate, infer on new images."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import write_voc
from tests.test_tools import REPO, run_tool

TINY = ["solver.max_iter=2", "solver.batch_size=2", "solver.warmup_iters=1", "solver.log_period=1",
        "data.num_workers=0", "model.roi_heads.batch_size_per_image=16", "threads=1", "solver.amp=off",
        "input.min_size=96", "input.max_size=128", "proposals.top_k=100"]


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """A VOC folder of six 96x128 images with rectangles, and a 2-iteration Fast R-CNN run on it."""
    base = tmp_path_factory.mktemp("fast")
    rng = np.random.default_rng(0)
    samples = {}
    for name in [f"im{i}" for i in range(6)]:
        image = np.full((96, 128, 3), 120, np.uint8)
        x, y = rng.integers(5, 60), rng.integers(5, 40)
        image[y:y + 40, x:x + 50] = rng.integers(0, 255, 3)
        box = (int(x) + 1, int(y) + 1, int(x) + 50, int(y) + 40)
        samples[name] = (image, [(["box", "cell"][len(name) % 2], box, 0)])
    root = write_voc(base / "voc", samples)
    data = [f"data.root={root}", "data.train.format=voc", "data.test.format=voc", "data.train.split=train",
            "data.test.split=train", f"data.train.proposals={base / 'props_train'}",
            f"data.test.proposals={base / 'props_test'}"]
    out = base / "run"
    proc = run_tool("train.py", str(REPO / "configs" / "fast_rcnn_r18_fpn.yaml"), f"output_dir={out}", *data, *TINY,
                    "--no-progress", cwd=base)
    return base, out, root, proc


def test_train_computes_proposals_then_trains_and_evaluates(fast_run):
    base, out, _, _ = fast_run
    assert len(list((base / "props_train").glob("*.npy"))) == 6
    assert "AR@100" in json.loads((base / "props_train" / "recall.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert "bbox/AP" in metrics and metrics["train/img_per_s"] > 0
    assert (out / "detections.png").is_file()
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss_' in line]
    assert log and "loss_rpn_cls" not in log[-1] and "loss_classifier" in log[-1]


def test_eval_and_infer_on_fast_rcnn(fast_run, tmp_path):
    _, out, root, _ = fast_run
    proc = run_tool("eval.py", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
                    f"output_dir={tmp_path / 'eval'}", "model.roi_heads.svd_rank=8", cwd=tmp_path)
    assert "AP50" in proc.stdout
    proc = run_tool("infer.py", str(root / "JPEGImages" / "im0.jpg"), "--config", str(out / "config.yaml"),
                    "--out", str(tmp_path / "infer"), "--score-thresh", "0.0", cwd=tmp_path)
    assert "note: selective search (fast mode) took" in proc.stdout
    assert (tmp_path / "infer" / "im0.jpg").is_file()


def test_rpn_keys_on_fast_rcnn_are_one_line_errors(tmp_path):
    proc = run_tool("train.py", str(REPO / "configs" / "fast_rcnn_r18_fpn.yaml"), "model.rpn.nms_thresh=0.5",
                    f"output_dir={tmp_path}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("train.py: error: config keys that do not apply to model.arch=fast_rcnn: "
                                   "model.rpn.nms_thresh (in the command line)")
