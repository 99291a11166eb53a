"""Alternating training under torchrun on the CPU (gloo): 2 processes at global batch 4 train, step by step, what
1 process at batch 4 trains, and a 2-process run killed with SIGKILL inside step 2 resumes with 1 process (and with
2) to the same weights.

Tiny: resnet18 FPN at 64 px on 8 generated 64x64 VOC images; steps of 1 / 5 / 1 / 1 iterations (solver.max_iter=5,
iter_fractions [0.2, 1.0, 0.2, 0.2]), checkpoints every 2. The tolerance is joint training's (1e-5,
tests/engine/test_distributed.py): the ranks' gradients are summed in another order than one process sums them, and
the weights part by float rounding alone (measured: 1.5e-8 after step 1, 7e-6 after step 2). The sample counts
differ between the ranks (UNEQUAL_COUNTS), so every step's losses must divide by the global count.

Interpreter starts are most of the time here, so the one-process side runs in this process, and one 2-process run
killed in step 2 serves both tests: a copy of it resumes with 2 processes (every step then ran on 2 processes:
the per-step comparison), another copy with 1.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine.test_distributed import UNEQUAL_COUNTS, _max_diff, _weights, kill_group
from tests.test_tools_no_lost_work import DEMO, REPO, tiny_voc

STEPS = ("1_rpn", "2_fast_rcnn", "3_rpn", "4_fast_rcnn")


def overrides(data: Path, out: Path) -> list[str]:
    return ["data.train.format=voc", "data.test.format=voc", f"data.root={data}", "data.train.split=trainval",
            "data.test.split=test", "input.min_size=64", "input.max_size=64", "solver.batch_size=4",
            "solver.amp=off", "model.backbone.norm=frozen_bn", "solver.warmup_iters=2", "solver.checkpoint_period=2",
            "solver.log_period=1", "data.num_workers=0", "model.rpn.post_nms_top_n_test=50", "threads=1",
            "test.report=false", *UNEQUAL_COUNTS, "train.schedule=alternating", "solver.max_iter=5",
            "train.alternating.iter_fractions=[0.2,1.0,0.2,0.2]", f"output_dir={out}"]


def train_here(data: Path, out: Path, resume: bool = False) -> None:
    """One process: tools/train.py's recipe in this process."""
    from detkit import recipes
    from detkit.config import load_config

    recipes.train(load_config(DEMO, overrides(data, out)), resume=resume, progress=False)


def torchrun(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(REPO / "tools" / "train.py"), DEMO, *overrides(data, out), "--no-progress", *extra]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_voc(tmp_path_factory.mktemp("voc") / "voc", count=8)


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    train_here(data, out)
    return out


@pytest.fixture(scope="module")
def killed_in_step_2(data, tmp_path_factory) -> Path:
    """A 2-process run SIGKILLed (workers and launcher) once step 2 has a last.pth."""
    out = tmp_path_factory.mktemp("killed") / "run"
    proc = subprocess.Popen(torchrun(data, out), cwd=out.parent, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not (out / "2_fast_rcnn" / "last.pth").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_group(proc)
    assert (out / "1_proposals" / "stage_done.json").is_file()  # step 1 and its store were done by both ranks
    assert torch.load(out / "2_fast_rcnn" / "last.pth", weights_only=False)["iteration"] in (2, 4)
    assert not (out / "2_fast_rcnn" / "model_final.pth").exists() and not (out / "3_rpn").exists()
    return out


def test_two_processes_train_each_alternating_step_as_one(one_process, killed_in_step_2, data, tmp_path):
    out = shutil.copytree(killed_in_step_2, tmp_path / "run")
    proc = subprocess.run(torchrun(data, out, "--resume"), cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resuming from {out / '2_fast_rcnn' / 'last.pth'} at iteration" in proc.stderr  # inside step 2
    for step in STEPS:  # RPN-only step, Fast R-CNN on the stored proposals, steps 3-4 with frozen parts
        diff = _max_diff(_weights(out / step / "model_final.pth"), _weights(one_process / step / "model_final.pth"))
        assert diff <= 1e-5, f"{step}: {diff}"
    assert _max_diff(_weights(out / "model_final.pth"), _weights(one_process / "model_final.pth")) <= 1e-5
    # The store both ranks filled, each its half: every image, boxes as one process proposes them (within the
    # step-1 weights' rounding, measured 1.1e-5 px), and the recall of the same boxes
    two, one = (sorted((d / "1_proposals" / "train").glob("*.npy")) for d in (out, one_process))
    assert [p.name for p in two] == [p.name for p in one] and len(one) == 8
    for a, b in zip(two, one):
        boxes_two, boxes_one = np.load(a), np.load(b)
        assert boxes_two.shape == boxes_one.shape and np.abs(boxes_two - boxes_one).max() <= 1e-3
    recall = "1_proposals/train/recall.json"
    assert (out / recall).read_text() == (one_process / recall).read_text()
    assert (out / "metrics.json").is_file() and not list(out.rglob("*.tmp"))


def test_two_processes_killed_in_step_2_then_one_resumes_to_the_same_weights(one_process, killed_in_step_2, data,
                                                                            tmp_path):
    out = shutil.copytree(killed_in_step_2, tmp_path / "run")
    train_here(data, out, resume=True)  # one process takes over step 2's global batch sequence where it stopped
    for step in STEPS[1:]:
        diff = _max_diff(_weights(out / step / "model_final.pth"), _weights(one_process / step / "model_final.pth"))
        assert diff <= 1e-5, f"{step}: {diff}"
    assert _max_diff(_weights(out / "model_final.pth"), _weights(one_process / "model_final.pth")) <= 1e-5
