"""Evaluate trained weights on a config's test split: COCO metrics (and VOC AP for VOC data).

    python tools/eval.py CONFIG --weights W [KEY=VALUE ...] [--out DIR] [--no-progress]

Prints the metrics table and writes metrics.json, config.yaml, detections.json (the COCO results it scored) and
report.html (error analysis; test.report=false skips it) to --out (default <output_dir>/eval), beside a training
run's own files, never over them.
"""
import argparse
from pathlib import Path

from detkit.cli import add_common_args, config_parser, run
from detkit.config import load_config, save_config


def main(args: argparse.Namespace) -> int:
    from detkit.evaluation.amp import with_test_amp
    from detkit.engine.run_dir import check_not_a_run, make_output_dir
    from detkit.edge import build_split, class_list, load_trained, setup
    from detkit.evaluation.predict import evaluate
    from detkit.atomic import write_json
    from detkit.evaluation.coco import format_coco_table

    cfg = load_config(args.config, args.overrides)
    out = check_not_a_run(args.out or Path(cfg.output_dir) / "eval", key="--out")
    device = setup(cfg, make_output_dir=False)
    model = load_trained(cfg, args.weights).to(device)  # the class list the weights were trained with
    model = with_test_amp(model, cfg.test.amp, device)  # bf16 autocast where it applies (test.amp)
    test_set = build_split(cfg, "test", class_list(cfg))
    metrics, results = evaluate(model, test_set, device, cfg.data.num_workers, voc=cfg.data.test.format == "voc",
                                progress=not args.no_progress)
    print(format_coco_table(metrics))
    if "voc/mAP" in metrics:
        print(f"VOC mAP@0.5 (area): {metrics['voc/mAP']:.4f}")
    make_output_dir(out, key="--out")
    write_json(out / "metrics.json", metrics)
    write_json(out / "detections.json", results)
    save_config(cfg, out / "config.yaml")
    print(f"wrote {out / 'metrics.json'} and detections.json")
    from detkit.report.run import report_run

    report_run(cfg, test_set, results, metrics, out)
    return 0


if __name__ == "__main__":
    parser = config_parser("eval.py", __doc__, config_help="YAML config (e.g. the config.yaml a training run wrote)",
                           overrides_help="dotted config overrides, e.g. data.root=/data/BCCD")
    parser.add_argument("--weights", required=True, help="model_final.pth or a checkpoint (last.pth)")
    parser.add_argument("--out", help="folder for metrics.json, config.yaml, detections.json and report.html "
                                      "(default <output_dir>/eval)")
    add_common_args(parser, progress=True)
    run(main, parser)
