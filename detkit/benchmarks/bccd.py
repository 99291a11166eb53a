"""BCCD side by side on one machine, in one process: torchvision's recipe script and detkit's config.

The torchvision side is the team's reference script (../shared/bench/tv_bccd_cpu.py), run in this process as it
is; the detkit side trains configs/bccd/faster_rcnn_r18_fpn.yaml, the same recipe (BCCD trainval -> test,
ResNet-18 FPN from scratch, min size 320, batch 4, the same warm-up and step schedule, horizontal flip).
Training img/s on both sides counts every iteration's wall time (data included) over all iterations.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import runpy
import sys
import time
from pathlib import Path

import torch

from detkit.atomic import write_json
from detkit.config import load_config
from detkit.errors import DetkitError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BCCD = os.environ.get("DETKIT_BCCD", str(REPO.parent / "shared" / "data" / "BCCD"))
DEFAULT_SCRIPT = str(REPO.parent / "shared" / "bench" / "tv_bccd_cpu.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tools/benchmark.py bccd`."""
    parser.add_argument("--root", default=DEFAULT_BCCD, help="BCCD folder (Pascal VOC layout)")
    parser.add_argument("--tv-script", default=DEFAULT_SCRIPT, help="torchvision reference script")
    parser.add_argument("--config", default=str(REPO / "configs" / "bccd" / "faster_rcnn_r18_fpn.yaml"))
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", default="torchvision,detkit", help="comma-separated: torchvision, detkit")
    parser.add_argument("--out", default="outputs/bench_bccd", help="folder for the detkit run and results.json")
    parser.add_argument("overrides", nargs="*", help="extra detkit config overrides, e.g. solver.amp=bf16")


def run_torchvision(script: str, root: str, iters: int, batch: int, min_size: int, threads: int) -> dict:
    """Runs the reference script in this process and returns the JSON it prints last."""
    if not Path(script).is_file():
        raise DetkitError(f"torchvision reference script not found: {script}")
    os.environ.update(MIN_SIZE=str(min_size), THREADS=str(threads))
    argv, sys.argv = sys.argv, [script, root, str(iters), str(batch), "resnet18"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv = argv
    lines = [line for line in out.getvalue().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1])
    return {"bbox/AP": result["mAP"], "bbox/AP50": result["AP50"], "bbox/AP75": result["AP75"],
            "train/img_per_s": result["train_img_per_s"], "infer/img_per_s": result["infer_img_per_s"]}


def run_detkit(config: str, root: str, out: str, iters: int, batch: int, min_size: int, threads: int,
               overrides: list[str]) -> dict:
    """Trains and evaluates detkit's recipe; training img/s from metrics.jsonl over all iterations."""
    from detkit.recipes import train

    cfg = load_config(config, [f"data.root={root}", f"output_dir={out}", f"solver.max_iter={iters}",
                               f"solver.batch_size={batch}", f"input.min_size={min_size}",
                               f"input.max_size={int(min_size * 4 / 3)}", f"threads={threads}",
                               f"solver.checkpoint_period={iters}", *overrides])
    metrics = train(cfg, resume=False, progress=False, overwrite=True)  # a benchmark always starts afresh
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "img_per_s" in r]
    seconds = sum(r["time"] * cfg.solver.log_period for r in records[:-1])
    seconds += records[-1]["time"] * (iters - cfg.solver.log_period * (len(records) - 1))
    return {k: metrics[k] for k in ("bbox/AP", "bbox/AP50", "bbox/AP75", "infer/img_per_s")} | {
        "train/img_per_s": iters * batch / seconds}


def format_table(results: dict[str, dict]) -> str:
    """A side-by-side table with detkit / torchvision ratios."""
    keys = ["bbox/AP", "bbox/AP50", "bbox/AP75", "train/img_per_s", "infer/img_per_s"]
    lines = [f"{'metric':<18}" + "".join(f"{side:>14}" for side in results) + "      ratio"]
    for key in keys:
        row = f"{key:<18}" + "".join(f"{r[key]:>14.4f}" for r in results.values())
        if {"detkit", "torchvision"} <= results.keys():
            row += f"{results['detkit'][key] / max(results['torchvision'][key], 1e-12):>10.3f}x"
        lines.append(row)
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Runs the chosen sides, prints the table and writes <out>/results.json."""
    if not Path(args.root, "ImageSets", "Main", "trainval.txt").is_file():
        raise DetkitError(f"no BCCD dataset at {args.root} (see data/README.md; pass --root)")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    results, wall = {}, {}
    for side in sides:
        start = time.perf_counter()
        if side == "torchvision":
            results[side] = run_torchvision(args.tv_script, args.root, args.iters, args.batch, args.min_size,
                                            args.threads)
        elif side == "detkit":
            results[side] = run_detkit(args.config, args.root, args.out, args.iters, args.batch, args.min_size,
                                       args.threads, args.overrides)
        else:
            raise DetkitError(f"unknown side {side!r}: use torchvision and/or detkit")
        wall[side] = time.perf_counter() - start
        print(f"{side}: {json.dumps(results[side])} ({wall[side]:.0f} s)", flush=True)
    print(format_table(results))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "iters": args.iters, "batch": args.batch,
            "min_size": args.min_size, "overrides": args.overrides, "wall_s": wall}
    write_json(Path(args.out) / "results.json", {"results": results, "meta": meta})
    return 0
