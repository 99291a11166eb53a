"""Error analysis of a detector: one self-contained report.html (PR curves, confusion matrix, TIDE error breakdown,
per-class AP, box sizes against the anchors, worst images, training curves) plus its figures as PNG.

    python tools/analyze.py RUN_DIR [--out DIR]                      a training run (or tools/eval.py's folder)
    python tools/analyze.py RUN_A RUN_B [--out DIR]                  two runs on the same test split, compared
    python tools/analyze.py CONFIG --weights W [KEY=VALUE ...] [--out DIR]   evaluate weights now, then analyse
    python tools/analyze.py --detections D.json --gt COCO.json [--images DIR] --out DIR

--out defaults to RUN_DIR itself (report.html beside metrics.json), <RUN_B>/compare_<RUN_A name> for a comparison
and <output_dir>/eval for CONFIG --weights.
"""
import argparse
from pathlib import Path

from detkit.cli import add_common_args, run
from detkit.errors import DetkitError


def main(args: argparse.Namespace) -> int:
    from detkit.report.run import load_run, read_json, read_results

    if args.detections or args.gt:
        if args.inputs or not (args.detections and args.gt and args.out):
            raise DetkitError("--detections and --gt go together, with --out and without RUN_DIR or CONFIG.")
        return _write(_from_files(args, read_json, read_results), Path(args.out))
    if not args.inputs:
        raise DetkitError("give a RUN_DIR, two run folders, CONFIG --weights W, or --detections and --gt.")
    first = Path(args.inputs[0])
    if first.suffix in (".yaml", ".yml") and first.is_file():
        if not args.weights:
            raise DetkitError(f"{first} is a config: pass --weights W (model_final.pth) to evaluate it.")
        return _evaluate_config(args)
    if args.weights:
        raise DetkitError("--weights goes with a CONFIG, not with a run folder (which holds its detections).")
    if len(args.inputs) == 1:
        return _write(load_run(first), Path(args.out) if args.out else first)
    if len(args.inputs) == 2:
        from detkit.report.compare import write_comparison

        second = Path(args.inputs[1])
        out = Path(args.out) if args.out else second / f"compare_{first.resolve().name}"
        print(f"wrote {write_comparison(load_run(first), load_run(second), out)} (open it in a browser)")
        return 0
    raise DetkitError(f"give one or two run folders, got {len(args.inputs)}: {' '.join(args.inputs)}")


def _from_files(args: argparse.Namespace, read_json, read_results):
    from detkit.report.report import ReportInputs

    gt = read_json(Path(args.gt), "ground-truth file")
    if not isinstance(gt, dict):
        raise DetkitError(f"ground-truth file {args.gt} must hold a COCO dict (images, annotations, categories).")
    image_paths = {}
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            raise DetkitError(f"--images {folder} is not a folder.")
        image_paths = {int(im["id"]): folder / str(im.get("file_name", "")) for im in gt.get("images", [])}
    return ReportInputs(ground_truth=gt, results=read_results(Path(args.detections)),
                        title=f"detkit error analysis: {Path(args.detections).name}", image_paths=image_paths)


def _write(inputs, out: Path) -> int:
    from detkit.engine.run_dir import make_output_dir
    from detkit.report.report import write_report

    make_output_dir(out, key="--out")
    print(f"wrote {write_report(inputs, out)} (open it in a browser)")
    return 0


def _evaluate_config(args: argparse.Namespace) -> int:
    """CONFIG --weights: tools/eval.py itself (which writes metrics.json, detections.json and report.html)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("detkit_tool_eval", Path(__file__).with_name("eval.py"))
    eval_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_tool)
    return eval_tool.main(argparse.Namespace(config=args.inputs[0], overrides=args.inputs[1:], weights=args.weights,
                                             out=args.out, no_progress=args.no_progress, debug=args.debug,
                                             onnx=None))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="analyze.py", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="*", help="RUN_DIR, RUN_A RUN_B, or CONFIG [KEY=VALUE ...]")
    parser.add_argument("--out", help="folder for report.html and report_figures/ (default: see above)")
    parser.add_argument("--weights", help="with CONFIG: model_final.pth or a checkpoint to evaluate")
    parser.add_argument("--detections", help="a COCO results JSON (list of image_id, category_id, bbox, score)")
    parser.add_argument("--gt", help="with --detections: its COCO ground-truth JSON")
    parser.add_argument("--images", help="with --gt: the folder of its images (file_name), for the worst images")
    add_common_args(parser, progress=True)
    run(main, parser)
