"""tools/propose.py as a user runs it: stopped with SIGTERM and resumed, then run again over a finished store."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import noisy_rectangles, write_voc

REPO = Path(__file__).resolve().parents[1]
NUM_IMAGES = 16


@pytest.fixture
def voc_config(tmp_path: Path):
    """A VOC test split of 16 noisy 200x150 images with rectangles, and a config writing proposals to a store."""
    samples = noisy_rectangles(NUM_IMAGES, 150, 200, (("cell", None),) * 3, sides=(20, 60), corners=(140, 100))
    root = write_voc(tmp_path / "voc", samples, splits=("test",))

    def config(store: Path) -> Path:
        path = tmp_path / f"{store.name}.yaml"
        path.write_text(f"data:\n  root: {root}\n  test: {{format: voc, split: test, proposals: {store}}}\n")
        return path
    return config


def propose(config: Path, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "tools" / "propose.py"), str(config), "--split", "test",
                             "--no-progress", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out, err


def test_a_killed_run_resumes_to_the_same_store_and_a_finished_store_costs_no_work(voc_config, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    start = time.perf_counter()
    out, _ = finish(propose(voc_config(straight), "--workers", "1", cwd=tmp_path))
    first_run_s = time.perf_counter() - start
    assert "AR@100" in out and "recall@0.7" in out

    proc = propose(voc_config(resumed), "--workers", "2", cwd=tmp_path)
    while len(list(resumed.glob("*.npy"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    stored = len(list(resumed.glob("*.npy")))
    assert proc.returncode == 130 and 3 <= stored < NUM_IMAGES, (proc.returncode, stored, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("propose.py: stopped"), err
    assert not (resumed / "recall.json").exists()

    finish(propose(voc_config(resumed), "--workers", "2", cwd=tmp_path))
    for image_id in range(1, NUM_IMAGES + 1):
        a, b = np.load(straight / f"{image_id}.npy"), np.load(resumed / f"{image_id}.npy")
        assert a.shape == b.shape and np.array_equal(a, b), image_id
    assert (straight / "recall.json").read_text() == (resumed / "recall.json").read_text()

    files = sorted(straight.iterdir())
    before = {p.name: p.stat().st_mtime_ns for p in files}
    start = time.perf_counter()
    out, _ = finish(propose(voc_config(straight), cwd=tmp_path))
    second_run_s = time.perf_counter() - start
    assert {p.name: p.stat().st_mtime_ns for p in sorted(straight.iterdir())} == before  # nothing recomputed
    assert "AR@100" in out
    print(f"propose.py over {NUM_IMAGES} images: first run {first_run_s:.2f} s, finished store {second_run_s:.2f} s")


def test_a_config_without_a_store_is_a_one_line_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {test: {format: demo}}\n")
    proc = propose(config, cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().count("\n") == 0
    assert "sets no proposal store (data.test.proposals)" in err
