"""`tools/benchmark.py elastic`: a lost worker under `torchrun --max-restarts 1` costs no work and no accuracy.

Runs a tiny demo training twice with 2 processes (gloo on the CPU): once straight through, once with one worker
killed by SIGKILL as soon as last.pth holds iteration `--kill-after`. torchrun then stops the other worker and
restarts the group; the restarted ranks see TORCHELASTIC_RESTART_COUNT=1 and resume from last.pth on their own.
Prints the iteration each run resumed from and the largest weight difference between the two finished runs.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from detkit.benchmarks.bccd import REPO
from detkit.errors import DetkitError

TINY = ["solver.batch_size=4", "solver.amp=off", "model.backbone.norm=frozen_bn", "solver.warmup_iters=2",
        "solver.checkpoint_period=2", "solver.log_period=1", "data.num_workers=0", "model.rpn.post_nms_top_n_test=50",
        "threads=1", "--no-progress"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tools/benchmark.py elastic`."""
    parser.add_argument("--out", default="outputs/elastic", help="folder for the two runs")
    parser.add_argument("--iters", type=int, default=6, help="training iterations (default 6)")
    parser.add_argument("--kill-after", type=int, default=2, help="kill a worker once last.pth holds this iteration")


def _command(out: Path, iters: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
            str(REPO / "tools" / "train.py"), str(REPO / "configs" / "demo.yaml"), f"output_dir={out}",
            f"solver.max_iter={iters}", *TINY, "--overwrite"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _workers(launcher_pid: int) -> list[int]:
    """Process ids of the launcher's children (the training workers), from /proc."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def _iteration(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["iteration"])
    except Exception:  # not written yet, or being replaced
        return -1


def run_killed(out: Path, iters: int, kill_after: int) -> tuple[int, str]:
    """Start the 2-process run, SIGKILL one worker after iteration `kill_after` is saved; return (its pid, log)."""
    log = out.with_name(out.name + ".log")
    with open(log, "w") as handle:
        proc = subprocess.Popen(_command(out, iters), env=_env(), stdout=handle, stderr=subprocess.STDOUT)
        deadline, victim = time.monotonic() + 600, 0
        while proc.poll() is None and time.monotonic() < deadline:
            if _iteration(out / "last.pth") >= kill_after and len(_workers(proc.pid)) == 2:
                victim = _workers(proc.pid)[-1]
                os.kill(victim, signal.SIGKILL)
                break
            time.sleep(0.2)
        code = proc.wait(timeout=900)
    if code != 0 or not victim:
        raise DetkitError(f"benchmark elastic: the killed run ended with status {code} (worker killed: "
                          f"{bool(victim)}); see {log}")
    return victim, log.read_text()


def main(args: argparse.Namespace) -> int:
    """Both runs, then the comparison."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    straight = subprocess.run(_command(out / "straight", args.iters), env=_env(), capture_output=True, text=True)
    if straight.returncode != 0:
        raise DetkitError(f"benchmark elastic: the straight run failed: {straight.stderr[-2000:]}")
    victim, log = run_killed(out / "killed", args.iters, args.kill_after)
    resumed = [line.strip() for line in log.splitlines() if "Resuming from" in line]
    restarts = [line.strip() for line in log.splitlines() if "Restarting" in line or "restart" in line.lower()][:3]
    a = torch.load(out / "straight" / "model_final.pth", weights_only=True)["model"]
    b = torch.load(out / "killed" / "model_final.pth", weights_only=True)["model"]
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    print(f"killed worker pid {victim} with SIGKILL after last.pth held iteration >= {args.kill_after}")
    for line in restarts + resumed:
        print(f"  log: {line[:200]}")
    print(f"max abs weight difference, restarted vs uninterrupted, after {args.iters} iterations: {diff:.3g}")
    return 0 if diff <= 1e-5 and resumed else 1
