"""R-CNN under torchrun (issue 25 items 2, 4, 5): 2 processes fill the feature cache one process fills (bit-equal
files, both sides at threads=1), fit the same SVMs and box regressors and give the same detections, through a
worker SIGKILLed in the features stage and the group's restart by torchrun (--max-restarts), inside the stage.

CPU, gloo, ten 64x48 VOC images of two classes, 30 proposals per image, 32 x 32 warps, 2 fine-tuning iterations.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.benchmarks.elastic import _workers
from tests.data.conftest import noisy_rectangles, write_voc

REPO = Path(__file__).resolve().parents[2]
NUM_IMAGES = 10
TINY = ["solver.max_iter=2", "solver.batch_size=2", "solver.warmup_iters=1", "solver.checkpoint_period=2",
        "solver.log_period=1", "solver.amp=off", "data.num_workers=0", "threads=1", "device=cpu",
        "input.min_size=64", "input.max_size=64", "proposals.top_k=30", "model.rcnn.features_per_image=30",
        "model.rcnn.svm_init_negatives=50", "model.rcnn.svm_cache_size=200", "model.rcnn.svm_rounds=2",
        "model.roi_heads.batch_size_per_image=16", "test.report=false", "--no-progress"]
LATER = ("3_features", "4_svms", "5_bbox_reg")  # the stages after fine-tuning
FINAL = ("model_final.pth", "metrics.json", "detections_test.json")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """A VOC folder (split train = test) of ten noisy 64x48 images with a rectangle of each class."""
    samples = noisy_rectangles(NUM_IMAGES, 48, 64, (("box", (220, 40, 40)), ("cell", (40, 40, 220))), sides=(12, 24),
                               corners=(40, 25))
    return write_voc(tmp_path_factory.mktemp("voc") / "voc", samples)


def _overrides(voc: Path, out: Path, stores: Path) -> list[str]:
    return [f"output_dir={out}", f"data.root={voc}", "data.train.format=voc", "data.test.format=voc",
            "data.train.split=train", "data.test.split=train", f"data.train.proposals={stores / 'train'}",
            f"data.test.proposals={stores / 'test'}", *TINY]


def _command(voc: Path, out: Path, nproc: int, *launcher_args: str) -> list[str]:
    """train.py on the tiny VOC set, alone or under torchrun; the proposal stores of the one-process run (complete
    after it: the stores a resumed run read must keep their paths)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                *launcher_args]
    return [*(launcher if nproc > 1 else [sys.executable]), str(REPO / "tools" / "train.py"),
            str(REPO / "configs" / "rcnn_r18.yaml"), *_overrides(voc, out, voc.parent / "proposals")]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _train(voc: Path, out: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    proc = subprocess.run([*_command(voc, out, nproc), *extra], cwd=out.parent, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def one_process(voc, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    _train(voc, out)
    return out


def test_two_processes_cache_fit_and_detect_what_one_process_does_through_a_restart(voc, one_process, tmp_path):
    """From the same fine-tuned CNN (one process's stages 1-2, copied: fine-tuning itself matches across process
    counts only to float rounding, as joint training), 2 processes resumed for the stages after it give bit-equal
    results,
    with a worker SIGKILLed part-way through the feature cache and the group restarted by torchrun (--max-restarts),
    which continues inside the features stage."""
    out = tmp_path / "run"
    shutil.copytree(one_process, out)
    for name in LATER:
        shutil.rmtree(out / name)
    for name in FINAL:
        (out / name).unlink()
    two = out / "3_features" / "cache"
    log = tmp_path / "torchrun.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([*_command(voc, out, 2, "--max-restarts=1"), "--resume"], cwd=tmp_path, env=_env(),
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and not list(two.glob("*.boxes.npz")) and time.monotonic() < deadline:
                time.sleep(0.02)
            workers = _workers(proc.pid)
            assert len(workers) == 2, log.read_text()[-3000:]
            os.kill(max(workers), signal.SIGKILL)  # one worker, without warning: torchrun restarts the group
            assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "stage 3/5 3_features: resuming" in text and "stage 2/5 2_finetune: finished earlier, skipped" in text
    counts = json.loads((out / "3_features" / "stage_done.json").read_text())
    assert counts["features/reused_images"] >= 1  # kept through the restart
    assert counts["features/reused_images"] + counts["features/computed_images"] == NUM_IMAGES

    one = one_process / "3_features" / "cache"
    names = sorted(p.name for p in one.iterdir())
    assert len(names) == 3 * NUM_IMAGES and sorted(p.name for p in two.iterdir()) == names
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    for stage, file in (("4_svms", "svms.npz"), ("5_bbox_reg", "regressors.npz")):
        with np.load(one_process / stage / file) as a, np.load(out / stage / file) as b:
            assert sorted(a.files) == sorted(b.files) == ["bias", "scale", "weight"]
            for key in a.files:
                assert np.array_equal(a[key], b[key]), (stage, key)
            assert (np.abs(b["weight"]).reshape(2, -1).sum(axis=1) > 0).all()  # both classes fitted
    a, b = (json.loads((d / "4_svms" / "stage_done.json").read_text()) for d in (one_process, out))
    assert b["svm/fitted_classes"] == 2 and {k: v for k, v in a.items() if k != "seconds"} == \
        {k: v for k, v in b.items() if k != "seconds"}
    detections = json.loads((out / "detections_test.json").read_text())
    assert len({d["image_id"] for d in detections}) == NUM_IMAGES  # both ranks' images gathered
    assert detections == json.loads((one_process / "detections_test.json").read_text())
    first, second = _weights(one_process / "model_final.pth"), _weights(out / "model_final.pth")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (out, one_process))
    assert metrics["bbox/AP"] == expected["bbox/AP"] and metrics["no_bbox_reg/bbox/AP"] == \
        expected["no_bbox_reg/bbox/AP"]
    assert not list(out.rglob("*.tmp"))


def test_sharing_deletes_only_the_temporary_files_of_dead_writers(tmp_path):
    from detkit.atomic import temp_path
    from detkit.recipes.rcnn.shares import share_missing

    dead = subprocess.Popen(["true"])
    dead.wait()
    live = temp_path(tmp_path / "2.fc7.npy")  # this process's name
    orphan = Path(str(live).replace(f".{os.getpid()}.", f".{dead.pid}."))  # a gone writer's name
    for path in (live, orphan, tmp_path / "1.boxes.npz"):
        path.write_bytes(b"x")
    todo, mine = share_missing([1, 2, 3], lambda i: (tmp_path / f"{i}.boxes.npz").is_file(), tmp_path)
    assert todo == mine == [2, 3]  # alone, every item left is this process's
    assert live.is_file() and not orphan.exists()
