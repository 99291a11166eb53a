"""`tools/benchmark.py train-gpu --smoke`: both sides train, infer at batch 1 and 8 and evaluate, on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BCCD = Path(os.environ.get("DETKIT_BCCD", "/work/shared/data/BCCD"))


@pytest.mark.skipif(not (BCCD / "Annotations").is_dir(), reason="BCCD data not present (set DETKIT_BCCD)")
def test_train_gpu_smoke_prints_both_sides_and_ratios(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "train-gpu", "--smoke",
                           "--root", str(BCCD), "--json", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    for side in ("torchvision", "detkit"):
        for key in ("bbox/AP", "bbox/AP50", "train/img_per_s", "infer/img_per_s_b1", "infer/img_per_s_b8"):
            assert key in results[side]
        assert results[side]["train/img_per_s"] > 0 and results[side]["infer/img_per_s_b8"] > 0
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert rows["train/img_per_s"].rstrip().endswith("x") and "train/peak_mem_mib" in rows


def test_train_gpu_names_a_folder_without_bccd(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "train-gpu", "--root", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0 and "is not a BCCD folder" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
