"""Draw a split's ground truth into a folder of images and a contact sheet, to see labelling errors before training.

    python tools/browse.py CONFIG [KEY=VALUE ...] [--split train|test] [--augment] [--proposals] [--out DIR]
                           [--limit N] [--no-progress]

--augment draws the training augmentation (flip, colour jitter) at the model's resize; --proposals adds the boxes
of the split's proposal store (data.<split>.proposals). Writes DIR/images/*.jpg and DIR/contact_sheet.png
(default DIR: <output_dir>/browse_<split>).
"""
import argparse
from pathlib import Path

from detkit.cli import add_common_args, config_parser, run
from detkit.config import load_config


def main(args: argparse.Namespace) -> int:
    from detkit.engine.run_dir import make_output_dir
    from detkit.report.browse import browse_config

    cfg = load_config(args.config, args.overrides)
    out = make_output_dir(args.out or Path(cfg.output_dir) / f"browse_{args.split}", key="--out")
    result = browse_config(cfg, args.split, out, augment=args.augment, proposals=args.proposals, limit=args.limit,
                           progress=not args.no_progress)
    boxes = ", ".join(f"{name} {n}" for name, n in sorted(result["boxes"].items()))
    print(f"drew {result['images']} images ({boxes or 'no boxes'}) into {out / 'images'}; "
          f"contact sheet {result['sheet']}")
    return 0


if __name__ == "__main__":
    parser = config_parser("browse.py", __doc__, config_help="YAML config, e.g. configs/demo.yaml",
                           overrides_help="dotted config overrides, e.g. data.root=../shared/data/BCCD")
    parser.add_argument("--split", default="train", choices=("train", "test"), help="which split (default train)")
    parser.add_argument("--augment", action="store_true",
                        help="draw the training augmentation and the model's resize, as the detector sees it")
    parser.add_argument("--proposals", action="store_true", help="also draw the proposal store's best 50 boxes")
    parser.add_argument("--out", help="output folder (default <output_dir>/browse_<split>)")
    parser.add_argument("--limit", type=int, help="draw only the first N images")
    add_common_args(parser, progress=True)
    run(main, parser)
