"""`tools/benchmark.py ops`: detkit's Triton kernels against torchvision.ops, side by side on one CUDA device.

Each case builds its inputs on demand, checks that both sides agree, then times each with CUDA events
(median of `reps` runs after `warmup`). Shapes follow /work/shared/bench/tv_ops_bench.py: NMS at 1k-100k
boxes, batched NMS over 80 classes, RoIAlign / RoIPool on a VGG C5 map (1x512x50x84, 2000 RoIs) and an FPN
P2 level (8x256x200x336, 4096 RoIs), and the multi-level pooler (batch 8, 512 RoIs per image). Two kinds of
row go beyond that file: `batched_nms80_offset_*` batches by the class-offset trick on detkit's plain NMS
kernel (the alternative to the per-class blocks batched_nms uses), and `*_nhwc` feeds RoIAlign channels-last
features (what a `model.backbone.channels_last` backbone produces; torchvision converts them per call).
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor

from detkit.atomic import write_json
from detkit.errors import DetkitError

Fn = Callable[[], object]


@dataclass
class Case:
    """One benchmark row: `setup` allocates inputs and returns (detkit_fn, torchvision_fn)."""

    name: str
    setup: Callable[[], tuple[Fn, Fn]]


def random_boxes(n: int, size: float, device: torch.device, generator: torch.Generator) -> Tensor:
    """Return Tensor[n, 4] boxes with corners in [0, size] and sides of 8 to 208 px (as the torchvision bench)."""
    xy = torch.rand(n, 2, generator=generator, device=device) * size
    wh = torch.rand(n, 2, generator=generator, device=device) * 200 + 8
    return torch.cat([xy, xy + wh], 1)


def fpn_levels(boxes: Tensor, k_min: int, k_max: int) -> Tensor:
    """Return each box's FPN level index, torchvision's LevelMapper rule (canonical 224 px at level 4)."""
    side = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(4 + torch.log2(side / 224) + torch.tensor(1e-6, dtype=side.dtype))
    return level.clamp(k_min, k_max).to(torch.int64) - k_min


def build_cases(device: torch.device, tiny: bool = False) -> list[Case]:
    """Return the benchmark cases; `tiny` shrinks every shape so the code can be checked on CPU."""
    from detkit.ops.kernels.nms import batched_nms_triton, nms_triton
    from detkit.ops.kernels.roi_align import roi_align_triton
    from detkit.ops.kernels.roi_pool import roi_pool_triton

    g = torch.Generator(device=device).manual_seed(0)
    cases = []
    for n in [70, 130] if tiny else [1000, 5000, 20000, 100000]:
        def nms_case(n=n):
            boxes, scores = random_boxes(n, 1333.0, device, g), torch.rand(n, generator=g, device=device)
            return lambda: nms_triton(boxes, scores, 0.7), lambda: torchvision.ops.nms(boxes, scores, 0.7)

        def batched_case(n=n):
            boxes, scores = random_boxes(n, 1333.0, device, g), torch.rand(n, generator=g, device=device)
            idxs = torch.randint(0, 80, (n,), generator=g, device=device)
            return (lambda: batched_nms_triton(boxes, scores, idxs, 0.5),
                    lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))

        def offset_case(n=n):
            # the class-offset trick (torchvision's, for few boxes) on detkit's plain NMS kernel: the other way
            # to batch, timed so the choice of per-class blocks in batched_nms_triton rests on a measurement
            boxes, scores = random_boxes(n, 1333.0, device, g), torch.rand(n, generator=g, device=device)
            idxs = torch.randint(0, 80, (n,), generator=g, device=device)

            def ours():
                offsets = idxs.to(boxes) * (boxes.max() + 1)
                return nms_triton(boxes + offsets[:, None], scores, 0.5)

            return ours, lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)

        cases += [Case(f"nms_{n}", nms_case), Case(f"batched_nms80_{n}", batched_case),
                  Case(f"batched_nms80_offset_{n}", offset_case)]
    shapes = [(1, 8, 10, 12, 20, "vgg_c5"), (2, 4, 20, 24, 16, "fpn_p2_b8")] if tiny else [
        (1, 512, 50, 84, 2000, "vgg_c5"), (8, 256, 200, 336, 512 * 8, "fpn_p2_b8")]
    for b, c, h, w, r, name in shapes:
        def inputs(b=b, c=c, h=h, w=w, r=r, channels_last=False):
            f = torch.randn(b, c, h, w, generator=g, device=device)
            if channels_last:  # as a backbone built with model.backbone.channels_last hands it over
                f = f.to(memory_format=torch.channels_last)
            idx = torch.randint(0, b, (r, 1), generator=g, device=device).float()
            return f.requires_grad_(), torch.cat([idx, random_boxes(r, min(h, w) * 4.0, device, g)], 1)

        def align_fwd(inputs=inputs, channels_last=False):
            f, rois = inputs(channels_last=channels_last)
            return (lambda: roi_align_triton([f], rois, None, (7, 7), [0.25], 2, True),
                    lambda: torchvision.ops.roi_align(f, rois, 7, 0.25, 2, True))

        def align_fwd_bwd(inputs=inputs, channels_last=False):
            f, rois = inputs(channels_last=channels_last)
            return (lambda: torch.autograd.grad(roi_align_triton([f], rois, None, (7, 7), [0.25], 2, True).sum(), f)[0],
                    lambda: torch.autograd.grad(torchvision.ops.roi_align(f, rois, 7, 0.25, 2, True).sum(), f)[0])

        def pool_fwd(inputs=inputs):
            f, rois = inputs()
            return lambda: roi_pool_triton(f, rois, (7, 7), 0.25), lambda: torchvision.ops.roi_pool(f, rois, 7, 0.25)

        cl_fwd, cl_fwd_bwd = (functools.partial(fn, channels_last=True) for fn in (align_fwd, align_fwd_bwd))
        cases += [Case(f"roi_align_fwd_{name}", align_fwd), Case(f"roi_align_fwdbwd_{name}", align_fwd_bwd),
                  Case(f"roi_pool_fwd_{name}", pool_fwd), Case(f"roi_align_fwd_{name}_nhwc", cl_fwd),
                  Case(f"roi_align_fwdbwd_{name}_nhwc", cl_fwd_bwd)]

    def multi_level():
        batch, height, width, per_image = (2, 64, 96, 16) if tiny else (8, 800, 1344, 512)
        strides = [4, 8, 16, 32]
        feats = {str(i): torch.randn(batch, 8 if tiny else 256, height // s, width // s, generator=g, device=device)
                 for i, s in enumerate(strides)}
        boxes = [random_boxes(per_image, float(height), device, g) for _ in range(batch)]
        pooler = torchvision.ops.MultiScaleRoIAlign(list(feats), 7, 2)
        levels_in = list(feats.values())
        scales = [1.0 / s for s in strides]
        k_min, k_max = int(math.log2(strides[0])), int(math.log2(strides[-1]))

        def ours():
            rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
            return roi_align_triton(levels_in, rois, fpn_levels(rois[:, 1:], k_min, k_max), (7, 7), scales, 2, False)

        return ours, lambda: pooler(feats, boxes, [(height, width)] * batch)

    cases.append(Case("multiscale_roi_align_b8x512", multi_level))
    return cases


def agreement(ours: object, reference: object) -> str:
    """Return 'same' / 'DIFFERENT' for index tensors, the max error relative to the largest |reference| for floats."""
    if not ours.is_floating_point():
        return "same" if torch.equal(ours, reference) else "DIFFERENT"
    err = (ours.double() - reference.double()).abs().max().item() if ours.numel() else 0.0
    return f"{err / max(reference.double().abs().max().item() if reference.numel() else 0.0, 1e-12):.1e}"


def cuda_median_ms(fn: Fn, warmup: int, reps: int) -> float:
    """Return the median CUDA-event time of fn in milliseconds."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


TABLE_HEADER = "| case | detkit ms | torchvision ms | speed-up | agreement |\n|---|---:|---:|---:|---|"


def format_row(row: dict) -> str:
    """Return one Markdown table row; speed-up is torchvision ms / detkit ms (above 1: detkit is faster)."""
    speedup = row["torchvision_ms"] / row["detkit_ms"] if row["detkit_ms"] > 0 else float("nan")
    times = f"{row['detkit_ms']:.3f}", f"{row['torchvision_ms']:.3f}", f"{speedup:.2f}x"
    cells = [row["case"], *times, row["agreement"]]
    return "| " + " | ".join(cells) + " |"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `ops` sub-command's flags."""
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before timing (default 5)")
    parser.add_argument("--reps", type=int, default=30, help="timed runs; the median is reported (default 30)")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX", help="run cases whose name starts so")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")


def main(args: argparse.Namespace) -> int:
    """Run the cases on the current CUDA device and print the table."""
    if not torch.cuda.is_available():
        raise DetkitError("benchmark ops: needs a CUDA device and none is visible (on CPU, run tests/ops instead).")
    if args.warmup < 0 or args.reps < 1:
        raise DetkitError(f"benchmark ops: --warmup must be >= 0 and --reps >= 1, got {args.warmup} and {args.reps}.")
    import triton

    device = torch.device("cuda")
    cases = [c for c in build_cases(device) if not args.only or any(c.name.startswith(p) for p in args.only)]
    if not cases:
        raise DetkitError(f"benchmark ops: no case starts with {', '.join(args.only)}.")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"triton {triton.__version__}; median of {args.reps} after {args.warmup} warm-up, CUDA events")
    print(TABLE_HEADER)
    rows = []
    for case in cases:
        ours, reference = case.setup()
        rows.append({"case": case.name, "agreement": agreement(ours(), reference()),
                     "detkit_ms": cuda_median_ms(ours, args.warmup, args.reps),
                     "torchvision_ms": cuda_median_ms(reference, args.warmup, args.reps)})
        print(format_row(rows[-1]), flush=True)
        del ours, reference
        torch.cuda.empty_cache()
    if args.json:
        write_json(args.json, rows)
    return 0
