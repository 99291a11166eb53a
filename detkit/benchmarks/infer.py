"""`tools/benchmark.py infer`: a trained detector and its torchvision twin (same weights) on the same images.

The twin is `detkit.interop.torchvision.to_torchvision(model)`, so the two differ only in code, not in weights,
anchors or thresholds. Images are decoded and moved to the device before timing; each round passes every image
through both sides, interleaved call by call with the order alternating (so that other jobs on a shared CPU slow
both sides alike), and the best round per side is reported (CUDA synchronised around each call). Works for ResNet-FPN detectors on CPU or CUDA.
detkit runs with the config's test-time settings: `test.amp` (auto: bf16 autocast where the CPU has native bf16),
`test.fold_bn`, `test.gather_roi_align` and `test.channels_last` (all on by default; docs/benchmarks.md "CPU inference
levers"); torchvision runs as it comes (float32). `--batch N` feeds both N images a call.

`--onnx` adds two ONNX Runtime sides (detkit.benchmarks.onnx_sides): detkit's export (tools/export.py's graph, float32)
and the torchvision twin exported the same way, both with the benchmark's thread count; `--int8` also a dynamically
int8-quantised detkit graph (onnxruntime.quantization). `--random-weights S` benchmarks random weights (class logits
times S) instead of trained ones, for speed only. The median round per side is reported with the best. On the
config's test split (no --images), each side's COCO mAP (and VOC mAP) over the benchmarked images is printed too,
from the detections of its last round (detkit.evaluation.predict.score).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.config import Config, load_config
from detkit.errors import DetkitError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `infer` sub-command's flags."""
    parser.add_argument("config", help="config.yaml of a training run")
    parser.add_argument("--weights", help="weights (default <output_dir>/model_final.pth of the config)")
    parser.add_argument("--images", nargs="+", metavar="PATH", help="image files or folders (default: the test split)")
    parser.add_argument("--limit", type=int, default=72, help="at most this many images (default 72)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per side; the best counts (default 2)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward call, both sides (default 1)")
    parser.add_argument("--batch-compare", type=int, metavar="N",
                        help="also detkit eager at N images a call (test.batch_size=N) against the one-image calls")
    parser.add_argument("--onnx", action="store_true",
                        help="also detkit's ONNX export and torchvision's, in ONNX Runtime")
    parser.add_argument("--int8", action="store_true", help="with --onnx: also the int8-quantised detkit graph")
    parser.add_argument("--random-weights", type=float, metavar="SHARPEN",
                        help="random weights, class logits multiplied by SHARPEN (speed only; no trained model needed)")
    parser.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE, e.g. threads=2")


def load_images(cfg: Config, paths: list[str] | None, limit: int) -> tuple[list[torch.Tensor], Any]:
    """Decoded CHW float images: the named files and folders (and None), else the config's first `limit` test
    images and that part of the test split (a dataset whose records are those images, to score detections)."""
    from detkit.data.image_io import collect_images, read_image, to_tensor

    if paths:
        return [to_tensor(read_image(p)) for p in collect_images(paths)[:limit]], None
    from detkit.edge import build_split, class_list

    dataset = build_split(cfg, "test", class_list(cfg))
    part = copy.copy(dataset)
    part.records = dataset.records[:limit]
    part.image_ids = [r.image_id for r in part.records]
    return [dataset[i][0] for i in range(len(part.records))], part


def mean_ap(detections: list[dict], dataset: Any) -> str:
    """'mAP 0.xxx (VOC 0.xxx)' of one side's detections (input pixels, one per image) on the benchmarked images."""
    from detkit.evaluation.predict import score

    outputs = [{k: v.float() if k != "labels" else v for k, v in d.items()} for d in detections]
    metrics, _ = score(outputs, dataset, voc=True, img_per_s=float("nan"))
    return f"mAP {metrics['bbox/AP']:.3f} (VOC {metrics['voc/mAP']:.3f})"


@torch.no_grad()
def timed_interleaved(sides: dict[str, nn.Module], images: list[torch.Tensor],
                      batch: int = 1) -> dict[str, tuple[float, list[dict]]]:
    """Time every side over `images`, `batch` at a time, interleaved call by call (the order alternating), so that other jobs on a
    shared machine slow both sides alike: per side, images per second and the detections (on the CPU)."""
    seconds = {name: 0.0 for name in sides}
    outputs: dict[str, list[dict]] = {name: [] for name in sides}
    for call, k in enumerate(range(0, len(images), batch)):
        for name in sorted(sides, reverse=call % 2 == 1):
            if images[0].is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = sides[name](images[k:k + batch])
            if images[0].is_cuda:
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
            outputs[name].extend({key: v.cpu() for key, v in out.items()} for out in result)
    return {name: (len(images) / max(seconds[name], 1e-9), outputs[name]) for name in sides}


class OneByOne:
    """A side called with several images that runs them one at a time (the batch-1 side of --batch-compare)."""

    def __init__(self, side: nn.Module) -> None:
        self.side = side

    def __call__(self, images: list[torch.Tensor]) -> list[dict]:
        return [out for im in images for out in self.side([im])]


def agreement(ours: list[dict], theirs: list[dict]) -> str:
    """'same detections' when every image has the same labels and boxes within 1e-3 px, else what differs."""
    counts = sum(len(o["boxes"]) for o in ours), sum(len(t["boxes"]) for t in theirs)
    same = all(len(o["boxes"]) == len(t["boxes"]) and torch.equal(o["labels"], t["labels"])
               and torch.allclose(o["boxes"], t["boxes"], atol=1e-3, rtol=0) for o, t in zip(ours, theirs))
    return "same detections" if same else f"detections differ ({counts[0]} detkit vs {counts[1]} torchvision boxes)"


def main(args: argparse.Namespace) -> int:
    """Time both sides and print one line each plus the ratio."""
    from detkit.edge import load_trained, setup
    from detkit.interop.torchvision import to_torchvision

    from detkit.evaluation.amp import resolve_test_amp, with_test_amp

    if args.limit < 1 or args.rounds < 1 or args.batch < 1:
        raise DetkitError(f"benchmark infer: --limit, --rounds and --batch must be >= 1, got {args.limit}, "
                          f"{args.rounds} and {args.batch}.")
    cfg = load_config(args.config, args.overrides)
    device = setup(cfg, make_output_dir=False)
    scratch = None
    if args.onnx or args.random_weights:
        from detkit.benchmarks import onnx_sides

        scratch = onnx_sides.scratch_folder()
    if args.random_weights:
        weights = onnx_sides.random_weights(cfg, args.random_weights, Path(scratch.name))
    else:
        weights = Path(args.weights) if args.weights else Path(cfg.output_dir) / "model_final.pth"
    model = load_trained(cfg, weights).to(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the twin from the unfolded weights: torchvision's backbone keeps its FrozenBatchNorm2d layers
        twin_cfg = load_config(args.config, [*args.overrides, "test.fold_bn=false"])
        twin = to_torchvision(load_trained(twin_cfg, weights)).to(device).eval()
    images, scored_on = load_images(cfg, args.images, args.limit)
    images = [im.to(device) for im in images]
    sides = {"detkit": with_test_amp(model, cfg.test.amp, device), "torchvision": twin}
    if args.onnx:
        if device.type != "cpu":
            raise DetkitError("benchmark infer --onnx runs ONNX Runtime on the CPU: use device=cpu")
        threads = torch.get_num_threads()
        fp32 = load_trained(load_config(args.config, args.overrides), weights).eval()  # the export is float32
        sides["detkit onnx"] = onnx_sides.DetkitOnnxSide(fp32, cfg.model.arch, cfg.model.class_names,
                                                         cfg.model.category_ids, Path(scratch.name), threads)
        if args.int8:
            sides["detkit onnx int8"] = onnx_sides.DetkitOnnxSide(fp32, cfg.model.arch, cfg.model.class_names,
                                                                  cfg.model.category_ids, Path(scratch.name), threads,
                                                                  quantize=True)
        sides["torchvision onnx"] = onnx_sides.TorchvisionOnnxSide(twin, images[0], threads)
        for side in sides.values():
            if hasattr(side, "prepare"):
                side.prepare(images)
    call_batch = args.batch
    if args.batch_compare:
        call_batch = args.batch_compare
        sides = {name: OneByOne(side) if name in ("detkit", "torchvision") else side for name, side in sides.items()}
        sides[f"detkit batch {call_batch}"] = sides["detkit"].side
    rounds: dict[str, list[float]] = {name: [] for name in sides}
    detections = {}
    for _ in range(args.rounds):
        for name, (ips, detections[name]) in timed_interleaved(sides, images, call_batch).items():
            rounds[name].append(ips)
    best = {name: max(v) for name, v in rounds.items()}
    median = {name: statistics.median(v) for name, v in rounds.items()}
    threads = torch.get_num_threads() if device.type == "cpu" else None
    where = f"{device.type}" + (f", {threads} threads" if threads else f" ({torch.cuda.get_device_name()})")
    levers = [k for k in ("fold_bn", "gather_roi_align", "channels_last") if getattr(cfg.test, k)]
    print(f"# {len(images)} images on {where}, {args.rounds} rounds, batch {args.batch}; detkit test.amp "
          f"{cfg.test.amp} -> {resolve_test_amp(cfg.test.amp, device)}, {', '.join(levers) or 'no other lever'}; "
          f"torch {torch.__version__}")
    for name in sides:
        count = sum(len(d["boxes"]) for d in detections[name])
        quality = f", {mean_ap(detections[name], scored_on)} on these {len(images)} images" if scored_on else ""
        print(f"{name:>16}: {median[name]:.2f} img/s median (best {best[name]:.2f}), {count} detections{quality}")
    print(f"{'ratio':>16}: {best['detkit'] / best['torchvision']:.2f}x (detkit / torchvision, best); "
          f"{agreement(detections['detkit'], detections['torchvision'])}")
    if args.batch_compare:
        name = f"detkit batch {call_batch}"
        print(f"{'ratio':>16}: {median[name] / median['detkit']:.2f}x ({name} / detkit batch 1, medians); "
              f"{agreement(detections[name], detections['detkit']).replace('torchvision', 'batch-1')}")
    for name in [n for n in sides if n.startswith("detkit onnx")]:
        print(f"{'ratio':>16}: {median[name] / median['torchvision']:.2f}x ({name} / torchvision eager), "
              f"{median[name] / median['torchvision onnx']:.2f}x ({name} / torchvision onnx), medians")
    for warning in caught:
        print(f"note: {warning.message}")
    return 0
