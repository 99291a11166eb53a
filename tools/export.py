"""Export trained weights to ONNX, pre- and post-processing inside the graph (run it with ONNX Runtime, no PyTorch).

    python tools/export.py CONFIG --weights W [--out model.onnx] [--opset N] [--int8] [--overwrite] [KEY=VALUE ...]

The graph takes one (H, W, 3) uint8 RGB image of any size (Fast R-CNN: and its (P, 4) float32 proposals in input
pixels) and returns boxes (D, 4) in input pixels, labels and scores; the class names, category ids, score threshold,
sizes, normalisation (and selective-search settings) are in its metadata (detkit.deploy.export). Default --out:
model.onnx beside the weights; an existing file is never written over without --overwrite. The graph is float32
(test.amp does not apply) and is checked with onnx.checker. --int8 writes the graph with int8 weights in its fully
connected layers instead (default --out model_int8.onnx; detkit.deploy.export.quantize_box_head): faster on the CPU,
its mAP to be checked with eval.py --onnx (docs/benchmarks.md has the figures measured).
"""
import argparse
from pathlib import Path

from detkit.cli import add_common_args, config_parser, run
from detkit.config import load_config


def main(args: argparse.Namespace) -> int:
    from detkit.deploy.export import (DEFAULT_OPSET, check_exportable, check_opset, detector_metadata, export_detector,
                                      quantize_box_head)
    from detkit.errors import DetkitError

    cfg = load_config(args.config, args.overrides)
    check_exportable(cfg.model.arch)  # before loading anything
    opset = args.opset or DEFAULT_OPSET
    check_opset(opset)
    weights = Path(args.weights)
    out = Path(args.out) if args.out else weights.with_name("model_int8.onnx" if args.int8 else "model.onnx")
    if out.exists() and not args.overwrite:
        raise DetkitError(f"--out {out} exists: pass --overwrite to replace it, or choose another --out")
    if out.is_dir():
        raise DetkitError(f"--out {out} is a folder: name the .onnx file to write")
    out.parent.mkdir(parents=True, exist_ok=True)

    from detkit.edge import load_trained, setup

    setup(cfg, make_output_dir=False)
    model = load_trained(cfg, weights).cpu()  # fills cfg.model.class_names from the weights
    p = cfg.proposals
    settings = {"mode": p.mode, "max_side": p.max_side, "min_size": p.min_size, "top_k": p.top_k}
    if model.needs_proposals and p.method != "selective_search":
        settings = {}  # an RPN's proposals cannot be recomputed at deployment: the caller passes them
    meta = detector_metadata(model, cfg.model.arch, cfg.model.class_names, cfg.model.category_ids, settings)
    if args.int8:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            float_graph = export_detector(model, Path(scratch) / "float32.onnx", meta, opset=opset)
            quantize_box_head(float_graph, out)
    else:
        export_detector(model, out, meta, opset=opset)
    size = out.stat().st_size / 2 ** 20
    kind = ", int8 fully connected layers" if args.int8 else ""
    print(f"wrote {out} ({size:.1f} MiB, opset {opset}, {cfg.model.arch}, {len(cfg.model.class_names)} classes{kind})")
    return 0


if __name__ == "__main__":
    parser = config_parser("export.py", __doc__, config_help="YAML config (e.g. the config.yaml a training run wrote)",
                           overrides_help="dotted config overrides, e.g. model.roi_heads.score_thresh=0.3")
    parser.add_argument("--weights", required=True, help="model_final.pth or a checkpoint (last.pth)")
    parser.add_argument("--out", help="the .onnx file to write (default: model.onnx beside --weights)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default 17; at least 16)")
    parser.add_argument("--int8", action="store_true",
                        help="int8 weights in the fully connected layers (default --out model_int8.onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    add_common_args(parser)
    run(main, parser)
