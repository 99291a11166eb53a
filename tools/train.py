"""Train a detector from a config, then evaluate it on the config's test split.

    python tools/train.py CONFIG [KEY=VALUE ...] [--resume]

Writes <output_dir>/config.yaml, metrics.jsonl, last.pth, model_final.pth, metrics.json and detections.png.
"""
import argparse

from detkit.cli import add_common_args, run
from detkit.config import load_config


def main(args: argparse.Namespace) -> int:
    from detkit.engine.workflow import train  # heavy imports after argument parsing

    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. solver.max_iter=100")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/last.pth")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    add_common_args(parser)
    run(main, parser)
