"""Train a detector from a config, then evaluate it on the config's test split.

    python tools/train.py CONFIG [KEY=VALUE ...] [--resume | --overwrite] [--check-data]

Writes <output_dir>/config.yaml, metrics.jsonl, last.pth, model_final.pth, metrics.json, detections.png and
report.html (error analysis, figures in report_figures/; test.report=false skips it).
An output_dir that already holds a run needs --resume (continue it) or --overwrite (start over in it).
"""
import argparse

from detkit.cli import add_common_args, config_parser, run
from detkit.config import load_config


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # a bad config fails before the heavy imports
    if args.check_data:
        from detkit.edge import check_config_data

        return check_config_data(cfg)
    from detkit.recipes import train

    train(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    parser = config_parser("train.py", __doc__, config_help="YAML config, e.g. configs/demo.yaml",
                           overrides_help="dotted config overrides, e.g. solver.max_iter=100")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/last.pth")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an output_dir that holds a run (its run files are deleted)")
    parser.add_argument("--check-data", action="store_true",
                        help="decode every image and check every annotation of both splits, list all problems, "
                             "and exit (status 1 when there are problems)")
    add_common_args(parser, progress=True)
    run(main, parser)
