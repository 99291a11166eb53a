"""The command-line tools on the demo data, end to end (tiny runs: a few iterations)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["input.min_size=64", "input.max_size=64", "solver.batch_size=2", "solver.warmup_iters=1",
        "solver.log_period=1", "data.num_workers=0", "model.rpn.post_nms_top_n_test=50",
        "model.roi_heads.batch_size_per_image=32", "threads=1"]
TRAINED = ["solver.max_iter=4", *TINY, "--no-progress"]  # the trained run, and the killed run's straight twin


def run_tool(name: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_tool_here(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """tools/<name> in this process (an interpreter start less than run_tool), for runs that end early, on an error:
    its exit status, stdout and stderr as run_tool gives them. Each tool keeps at least one run_tool test of such an
    error, which also checks what an interpreter of its own prints."""
    import contextlib
    import io
    import runpy

    path = str(REPO / "tools" / name)
    out, err, code = io.StringIO(), io.StringIO(), 0
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", [path, *args])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(path, run_name="__main__")
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return subprocess.CompletedProcess([sys.executable, path, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo_cache")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, demo_cache):
    out = tmp_path_factory.mktemp("run")
    run_tool("train.py", str(REPO / "configs" / "demo.yaml"), f"output_dir={out}", f"data.demo_cache={demo_cache}",
             *TRAINED, cwd=out)
    return out


def test_train_writes_metrics_weights_config_and_picture(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75", "train/img_per_s", "infer/img_per_s"):
        assert key in metrics
    assert metrics["train/img_per_s"] > 0
    for name in ("config.yaml", "model_final.pth", "last.pth", "metrics.jsonl", "detections.png"):
        assert (trained_run / name).is_file(), name


def test_train_writes_report_html_and_analyze_reads_and_compares_runs(trained_run, tmp_path):
    html = (trained_run / "report.html").read_text()  # beside metrics.json, as the Quick start's demo run leaves it
    assert 'id="errors"' in html and 'id="training"' in html and "Nothing to show: the run folder" not in html
    assert (trained_run / "report_figures" / "pr_curves.png").is_file()
    bare = tmp_path / "bare"  # a run folder without metrics.jsonl (nor metrics.json)
    bare.mkdir()
    for name in ("config.yaml", "detections_test.json"):
        (bare / name).write_bytes((trained_run / name).read_bytes())
    run_tool("analyze.py", str(bare), "--no-progress", cwd=tmp_path)
    assert "Nothing to show: the run folder and its stage folders hold no metrics.jsonl" in (bare / "report.html").read_text()
    run_tool("analyze.py", str(trained_run), str(bare), "--out", str(tmp_path / "compare"), cwd=tmp_path)
    assert "Errors that changed" in (tmp_path / "compare" / "compare.html").read_text()


def test_eval_and_infer_use_the_trained_model(trained_run, demo_cache, tmp_path):
    proc = run_tool("eval.py", str(trained_run / "config.yaml"), "--weights", str(trained_run / "model_final.pth"),
                    f"output_dir={tmp_path / 'eval'}", "--no-progress", cwd=tmp_path)
    assert "AP50" in proc.stdout and (tmp_path / "eval" / "eval" / "metrics.json").is_file()  # <output_dir>/eval
    for name in ("report.html", "detections.json"):  # the error analysis and the detections it scored
        assert (tmp_path / "eval" / "eval" / name).is_file(), name
    assert "infer:" not in proc.stderr  # --no-progress: no bar
    images = sorted(next(demo_cache.glob("*/test")).glob("*.jpg"))[:2]
    out = tmp_path / "infer"
    run_tool("infer.py", *map(str, images), "--config", str(trained_run / "config.yaml"), "--out", str(out),
             "--score-thresh", "0.0", cwd=tmp_path)
    results = json.loads((out / "detections.json").read_text())
    assert results and all({"image_id", "category_id", "bbox", "score", "file_name"} <= r.keys() for r in results)
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(p.name for p in images)


def test_recipe_plus_weights_is_enough_the_class_list_travels_with_the_weights(trained_run, demo_cache, tmp_path):
    from detkit.config import load_config
    from detkit.data import DEMO_CLASSES
    from detkit.edge import load_trained

    saved = torch.load(trained_run / "model_final.pth", weights_only=True)
    assert saved["meta"] == {"class_names": DEMO_CLASSES, "category_ids": [1, 2, 3, 4]}
    image = sorted(next(demo_cache.glob("*/test")).glob("*.jpg"))[0]
    out = tmp_path / "infer"
    proc = run_tool("infer.py", str(image), "--config", str(REPO / "configs" / "demo.yaml"), "--weights",
                    str(trained_run / "model_final.pth"), "--out", str(out), "--score-thresh", "0.0", "--no-progress",
                    cwd=tmp_path)
    assert "infer:" not in proc.stderr  # --no-progress: no bar
    results = json.loads((out / "detections.json").read_text())
    assert results and all(r["category"] == DEMO_CLASSES[r["category_id"] - 1] for r in results)
    cfg = load_config(REPO / "configs" / "demo.yaml")  # a recipe without class names, and last.pth's config
    load_trained(cfg, trained_run / "last.pth")
    assert cfg.model.class_names == DEMO_CLASSES and cfg.model.category_ids == [1, 2, 3, 4]

def test_infer_benchmark_times_the_model_and_its_torchvision_twin(trained_run, demo_cache, tmp_path):
    proc = run_tool("benchmark.py", "infer", str(trained_run / "config.yaml"), "--limit", "2", "--rounds", "1",
                    f"data.demo_cache={demo_cache}", "model.roi_heads.aligned=false", "test.amp=off", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# 2 images on cpu")
    sides = {line.split(":")[0].strip(): line for line in lines if "img/s" in line}
    assert {"detkit", "torchvision"} <= sides.keys()
    assert "same detections" in proc.stdout
    # on the test split each side is scored on the benchmarked images: the same detections, the same mAP
    scores = {name: re.search(r"mAP (\d\.\d{3}) \(VOC (\d\.\d{3})\) on these 2 images", line).groups()
              for name, line in sides.items()}
    assert scores["detkit"] == scores["torchvision"]


def test_a_killed_run_resumes_to_the_same_weights_as_a_straight_run(trained_run, tmp_path, demo_cache):
    # the straight run is trained_run; no report for the two runs here (not a training key: --resume accepts it)
    common = [str(REPO / "tools" / "train.py"), str(REPO / "configs" / "demo.yaml"), f"data.demo_cache={demo_cache}",
              *TRAINED, "test.report=false"]
    # SIGTERM once the first iteration is logged: the trainer saves last.pth at the end of that iteration and exits.
    resumed = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, *common, f"output_dir={resumed}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = resumed / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, proc.stderr.read()[-2000:]
    stopped_at = torch.load(resumed / "last.pth", weights_only=False)["iteration"]
    assert 1 <= stopped_at < 4 and not (resumed / "model_final.pth").exists()
    run_tool("train.py", *common[1:], f"output_dir={resumed}", "--resume", cwd=tmp_path)
    assert not (resumed / "report.html").exists()
    straight = torch.load(trained_run / "model_final.pth", weights_only=True)["model"]
    final = torch.load(resumed / "model_final.pth", weights_only=True)["model"]
    for key, value in straight.items():
        torch.testing.assert_close(final[key], value, atol=1e-6, rtol=0, msg=key)


def test_bad_input_is_one_line_without_traceback(tmp_path):
    proc = run_tool("train.py", str(REPO / "configs" / "demo.yaml"), "solver.max_iters=3", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "unknown config key 'solver.max_iters'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool("infer.py", "missing.jpg", "--config", str(tmp_path / "none.yaml"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no trained model" in proc.stderr and "Traceback" not in proc.stderr
