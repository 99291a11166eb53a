"""Evaluate trained weights on a config's test split: COCO metrics (and VOC AP for VOC data).

    python tools/eval.py CONFIG --weights W [KEY=VALUE ...] [--out DIR] [--no-progress]
    python tools/eval.py CONFIG --onnx model.onnx [KEY=VALUE ...]     (an export of tools/export.py, ONNX Runtime)

Prints the metrics table and writes metrics.json, config.yaml, detections.json (the COCO results it scored) and
report.html (error analysis; test.report=false skips it) to --out (default <output_dir>/eval, with --onnx
<output_dir>/eval_onnx), beside a training run's own files, never over them.
"""
import argparse
from pathlib import Path

from detkit.cli import add_common_args, config_parser, run
from detkit.config import load_config, save_config


def main(args: argparse.Namespace) -> int:
    from detkit.atomic import write_json
    from detkit.edge import build_split, class_list, load_trained, setup
    from detkit.engine.run_dir import check_not_a_run, make_output_dir
    from detkit.evaluation.amp import with_test_amp
    from detkit.evaluation.coco import format_coco_table
    from detkit.evaluation.predict import evaluate
    from detkit.report.run import report_run

    cfg = load_config(args.config, args.overrides)
    # an ONNX export's evaluation goes beside the .pth one, not over it
    out = check_not_a_run(args.out or Path(cfg.output_dir) / ("eval_onnx" if args.onnx else "eval"), key="--out")
    device = setup(cfg, make_output_dir=False)
    voc = cfg.data.test.format == "voc"
    if args.onnx:
        metrics, results, test_set = evaluate_onnx(cfg, args.onnx, voc, progress=not args.no_progress)
    else:
        model = load_trained(cfg, args.weights).to(device)  # the class list the weights were trained with
        model = with_test_amp(model, cfg.test.amp, device)  # bf16 autocast where it applies (test.amp)
        test_set = build_split(cfg, "test", class_list(cfg))
        metrics, results = evaluate(model, test_set, device, cfg.data.num_workers, voc=voc,
                                    progress=not args.no_progress, batch_size=cfg.test.batch_size)
    print(format_coco_table(metrics))
    if "voc/mAP" in metrics:
        print(f"VOC mAP@0.5 (area): {metrics['voc/mAP']:.4f}")
    make_output_dir(out, key="--out")
    write_json(out / "metrics.json", metrics)
    write_json(out / "detections.json", results)
    save_config(cfg, out / "config.yaml")
    print(f"wrote {out / 'metrics.json'} and detections.json")
    report_run(cfg, test_set, results, metrics, out)
    return 0


def evaluate_onnx(cfg, path: str, voc: bool, progress: bool) -> tuple[dict, list[dict], object]:
    """COCO (and VOC) metrics, COCO results and the test split of an ONNX export on the config's test split, run by
    ONNX Runtime (cfg.threads)."""
    from detkit.data.classes import trained_class_list
    from detkit.deploy import OnnxDetector
    from detkit.deploy.predict import onnx_class_list, predict_onnx
    from detkit.edge import build_split
    from detkit.errors import DetkitError
    from detkit.evaluation.predict import score

    detector = OnnxDetector(path, threads=cfg.threads)
    m = cfg.model
    if m.arch != detector.metadata["arch"]:
        raise DetkitError(f"{path} is a {detector.metadata['arch']} export but the config's model.arch is {m.arch}")
    classes = trained_class_list(m.class_names, m.category_ids, m.num_classes, onnx_class_list(detector), path)
    m.class_names, m.category_ids = list(classes.names), list(classes.category_ids)
    test_set = build_split(cfg, "test", classes, progress=progress)
    outputs, img_per_s = predict_onnx(detector, test_set, progress=progress)
    metrics, results = score(outputs, test_set, voc, img_per_s)
    return metrics, results, test_set


if __name__ == "__main__":
    parser = config_parser("eval.py", __doc__, config_help="YAML config (e.g. the config.yaml a training run wrote)",
                           overrides_help="dotted config overrides, e.g. data.root=/data/BCCD")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="model_final.pth or a checkpoint (last.pth)")
    source.add_argument("--onnx", help="an .onnx file from tools/export.py, run with ONNX Runtime")
    parser.add_argument("--out", help="folder for metrics.json, config.yaml, detections.json and report.html "
                                      "(default <output_dir>/eval; with --onnx <output_dir>/eval_onnx)")
    add_common_args(parser, progress=True)
    run(main, parser)
