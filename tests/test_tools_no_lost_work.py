"""The command-line tools never lose a run's work or overwrite files (issue 13), checked on what is left on disk.

Tiny runs on the demo data at 64 px with resnet18 (configs/demo.yaml), a few iterations each."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from detkit.data.demo import ensure_demo
from tests.test_tools import run_tool, run_tool_here

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
TINY = ["input.min_size=64", "input.max_size=64", "solver.batch_size=2", "solver.warmup_iters=1",
        "solver.log_period=1", "solver.steps=[0.9]", "data.num_workers=0", "model.rpn.post_nms_top_n_test=50",
        "model.roi_heads.batch_size_per_image=32", "solver.amp=off", "threads=1",
        "test.report=false"]  # the report's own tests: tests/report, tests/test_tools.py


def tool(name: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run_tool(name, *args, cwd=cwd, check=check)


def one_error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The single error line a tool printed (and no traceback)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.suffix != ".pth"} | {
        p.name: str(p.stat().st_mtime_ns).encode() for p in folder.glob("*.pth")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    tool("train.py", DEMO, f"output_dir={out}", "solver.max_iter=2", *TINY, "--no-progress", cwd=out)
    return out


def test_sigterm_to_the_process_group_with_loader_workers_saves_last_pth_and_says_one_line(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [*TINY, "data.num_workers=2", "solver.max_iter=500", "solver.checkpoint_period=1000"]
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), DEMO, f"output_dir={out}", *args,
                             "--no-progress"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log, deadline = out / "metrics.jsonl", time.monotonic() + 300
    while proc.poll() is None and not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)  # what timeout, docker stop, systemd and Slurm do: the whole group
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "killed by signal" not in stderr
    iteration = torch.load(out / "last.pth", weights_only=False)["iteration"]
    assert 1 <= iteration < 500 and not (out / "model_final.pth").exists()
    assert stderr.strip().splitlines()[-1] == (f"Stopped by signal 15 after iteration {iteration}: {out}/last.pth "
                                               "saved; --resume continues from there.")


def tiny_voc(root: Path, count: int = 12, truncated: tuple[str, ...] = ()) -> Path:
    """A VOC folder of `count` 64x64 images with one box each (split trainval = test = all); some truncated."""
    import numpy as np

    from tests.data.conftest import write_voc

    samples = {}
    for n in range(count):
        image = np.full((64, 64, 3), 40, np.uint8)
        x = 8 + 3 * n
        image[16:40, x:x + 20] = 220
        samples[f"{n:03d}"] = (image, [("block", (x + 1, 17, x + 20, 40), 0)])
    write_voc(root, samples, splits=("trainval", "test"))
    for image_id in truncated:
        path = root / "JPEGImages" / f"{image_id}.jpg"
        path.write_bytes(path.read_bytes()[:200])
    return root


def test_a_corrupt_image_mid_run_saves_last_pth_first_then_one_line(tmp_path):
    from detkit.data.loader import TrainStream

    batches = iter(TrainStream(12, 2, seed=0))  # the training order of seed 0: corrupt an image of batch 3
    third = [next(batches) for _ in range(3)][-1]
    data = tiny_voc(tmp_path / "voc", truncated=(f"{third[0][0]:03d}",))
    out = tmp_path / "run"
    proc = tool("train.py", DEMO, f"output_dir={out}", "data.train.format=voc", "data.test.format=voc",
                f"data.root={data}", "data.train.split=trainval", "data.test.split=test", "solver.max_iter=40",
                "solver.checkpoint_period=100", *TINY, "data.num_workers=2", "--no-progress", cwd=tmp_path,
                check=False)
    line = one_error_line(proc, "train.py")
    assert "is corrupt" in line and "DataLoader worker" not in line
    assert torch.load(out / "last.pth", weights_only=False)["iteration"] == 2  # checkpoint_period was 100
    assert f"Error after iteration 2: {out}/last.pth saved; once fixed, --resume continues" in proc.stderr
    assert [json.loads(line)["iter"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_train_refuses_a_folder_holding_a_run_and_leaves_it_as_it_was(run, tmp_path):
    before = snapshot(run)
    line = one_error_line(run_tool_here("train.py", DEMO, f"output_dir={run}", *TINY, cwd=tmp_path), "train.py")
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert snapshot(run) == before


def test_resume_with_a_changed_model_is_refused_before_anything_is_written(run, tmp_path):
    before = snapshot(run)
    proc = run_tool_here("train.py", DEMO, f"output_dir={run}", "solver.max_iter=3", *TINY,
                         "model.roi_heads.representation_size=64", "--resume", cwd=tmp_path)
    line = one_error_line(proc, "train.py")
    assert "model.roi_heads.representation_size (256 -> 64)" in line and "iteration 2" in line
    assert snapshot(run) == before  # config.yaml still loads model_final.pth


def test_resume_with_a_new_base_lr_uses_it_and_records_it(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    proc = tool("train.py", DEMO, f"output_dir={copy}", *TINY, "solver.max_iter=3", "solver.base_lr=0.005",
                "--resume", "--no-progress", cwd=tmp_path)
    assert "--resume: solver.base_lr changes from 0.02 to 0.005; used from iteration 2 on" in proc.stderr
    changes = [json.loads(line) for line in (copy / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"iteration": 2, "changes": {"solver.base_lr": [0.02, 0.005], "solver.max_iter": [2, 3]}}]
    assert yaml.safe_load((copy / "config.yaml").read_text())["solver"]["base_lr"] == 0.005
    records = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "lr" in r] == [1, 2, 3]
    assert [r["lr"] for r in records if r["iter"] == 3] == [pytest.approx(0.005)]  # warm-up over, no decay yet
    assert torch.load(copy / "last.pth", weights_only=False)["iteration"] == 3


def test_eval_writes_beside_the_run_never_over_it(run, tmp_path):
    before = snapshot(run)
    tool("eval.py", str(run / "config.yaml"), "--weights", str(run / "model_final.pth"), cwd=tmp_path)
    assert json.loads((run / "eval" / "metrics.json").read_text())["bbox/AP"] >= 0
    assert (run / "eval" / "config.yaml").is_file()
    assert snapshot(run) == before and "train/img_per_s" in json.loads((run / "metrics.json").read_text())
    line = one_error_line(run_tool_here("eval.py", str(run / "config.yaml"), "--weights", str(run / "model_final.pth"),
                                        "--out", str(run), cwd=tmp_path), "eval.py")
    assert "holds a training run" in line


def test_infer_keeps_inputs_gives_each_its_own_output_and_skips_corrupt_images(run, tmp_path):
    images = sorted((ensure_demo() / "test").glob("*.jpg"))[:3]  # the demo set the run trained on
    inputs = tmp_path / "in"
    for target, source in zip(("a/x.jpg", "a/x.png", "b/x.jpg"), images):
        (inputs / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, inputs / target)
    (inputs / "a" / "broken.jpg").write_bytes((inputs / "a" / "x.jpg").read_bytes()[:100])
    originals = {p: p.read_bytes() for p in inputs.rglob("*.*")}
    config = ["--config", str(run / "config.yaml"), "--score-thresh", "0"]
    line = one_error_line(run_tool_here("infer.py", str(inputs / "a"), *config, "--out", str(inputs / "a"),
                                        cwd=tmp_path), "infer.py")
    assert "would write over the input image" in line
    out = tmp_path / "out"
    proc = tool("infer.py", str(inputs / "a"), str(inputs / "b"), *config, "--out", str(out), cwd=tmp_path,
                check=False)
    assert "broken.jpg" in proc.stderr and "1 unreadable image(s) skipped" in proc.stdout
    # Kept going past it, but exits 1 as cp and rsync do (issue #21 item 5), saying so on its last line.
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "infer.py: 1 of 4 input(s) skipped as unreadable: exit status 1"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a/x.jpg", "a/x.png", "b/x.jpg", "config.yaml", "detections.json"]
    results = json.loads((out / "detections.json").read_text())
    assert {r["file_name"] for r in results} == {str(inputs / n) for n in ("a/x.jpg", "a/x.png", "b/x.jpg")}
    assert {p: p.read_bytes() for p in inputs.rglob("*.*")} == originals
    stopped = tmp_path / "stopped"
    proc = run_tool_here("infer.py", str(inputs / "a"), *config, "--out", str(stopped), "--stop-on-error",
                         cwd=tmp_path)
    assert "broken.jpg is corrupt" in one_error_line(proc, "infer.py")
    assert json.loads((stopped / "detections.json").read_text()) == []  # broken.jpg sorts first: nothing done yet


def test_bad_paths_and_values_are_one_line_each(tmp_path):
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "base5.yaml").write_text("_base_: 5\n")
    cases = [
        ([DEMO, f"output_dir={tmp_path / 'taken'}"], "taken is a file, not a folder"),
        ([str(tmp_path / "base5.yaml")], "'_base_'"),
    ]  # the rest (a path under a file, threads=-1, ...): in-process in test_cli_errors.py, engine/test_run_dir.py
    for args, expected in cases:
        assert expected in one_error_line(run_tool_here("train.py", *args, cwd=tmp_path), "train.py")
    assert (tmp_path / "taken").read_text() == "a file"


def test_check_data_lists_every_problem_and_fails(tmp_path):
    proc = run_tool_here("train.py", DEMO, "data.max_image_pixels=100", "--check-data", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    problems = [line for line in lines if line.startswith(("[train]", "[test]"))]
    assert any(line.startswith("[test]") for line in problems)
    assert lines[-1] == f"check data: {len(problems)} problem(s) among {len(problems)} images"
    assert "over the cap of 100" in problems[0]
    assert not (tmp_path / "outputs").exists()
