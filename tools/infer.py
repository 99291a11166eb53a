"""Detect objects in images: writes COCO-format results, drawn pictures and the config used.

    python tools/infer.py IMAGE_OR_FOLDER ... [--config C] [--weights W] [--out DIR] [--score-thresh S] [--no-progress]
    python tools/infer.py --onnx model.onnx IMAGE_OR_FOLDER ... [--threads N]   (ONNX Runtime, tools/export.py)

With --onnx, onnx_metadata.json (the export's classes, sizes and thresholds) takes the place of config.yaml.
With no --config/--weights it uses the model the README's main command trained (outputs/demo). Each input gets its
own drawn picture under --out, at its path relative to the inputs' common folder; an input file is never written
over. An unreadable image is skipped with a warning (--stop-on-error stops instead) and the exit status is then 1,
as cp and rsync do; detections.json always holds the results of the images done. Boxes are in the orientation a
viewer shows (EXIF orientation applied); any decodable image (grayscale, RGBA, 16-bit, 1 x 1, 10000 x 20) is read.
--batch-size images (default: the config's test.batch_size) go through the model at a time. A detector that reads
proposals (Fast R-CNN, R-CNN) gets them from selective search on each image, inside the model, and the time that
costs is printed.
"""
import argparse
import sys
from pathlib import Path

from detkit.cli import add_common_args, run
from detkit.config import load_config, save_config
from detkit.errors import DetkitError

DEFAULT_RUN = Path("outputs/demo")


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from detkit.atomic import write_json
    from detkit.data.image_io import collect_images, output_paths, read_image, to_tensor
    from detkit.edge import class_list, load_trained, setup
    from detkit.engine.run_dir import check_not_a_run, make_output_dir
    from detkit.evaluation.amp import with_test_amp
    from detkit.progress import progress_bar
    from detkit.visualize import draw_detections, save_image

    if args.onnx and (args.config or args.weights):
        raise DetkitError("--onnx runs an exported model: it takes no --config or --weights")
    cfg = None
    if not args.onnx:
        config = Path(args.config) if args.config else DEFAULT_RUN / "config.yaml"
        if not config.is_file():
            raise DetkitError(f"no trained model at {config.parent}: train one first with "
                              "`python tools/train.py configs/demo.yaml`, or pass --config and --weights")
        cfg = load_config(config)
    out = check_not_a_run(args.out, key="--out", tool="infer")
    images = collect_images(args.inputs)
    drawn_paths = output_paths(images, out)  # refuses before any work when an input would be written over
    if args.onnx:
        from detkit.deploy import OnnxDetector

        detector = OnnxDetector(args.onnx, threads=args.threads)  # checked before any folder is made
        names, category_ids = detector.class_names, dict(enumerate(detector.category_ids, start=1))
        generator = None  # the export runs selective search itself
    make_output_dir(out, key="--out")
    if cfg is not None:
        weights = Path(args.weights) if args.weights else Path(cfg.output_dir) / "model_final.pth"
        device = setup(cfg, make_output_dir=False)
        model = load_trained(cfg, weights).to(device)  # the class names and ids the weights were trained with
        generator = model.test_proposal_generator  # Fast R-CNN / R-CNN: selective search inside the model
        model = with_test_amp(model, cfg.test.amp, device)  # bf16 autocast where it applies (test.amp)
        classes = class_list(cfg)
        names, category_ids = list(classes.names), classes.label_to_category_id
    results, skipped, done = [], [], 0
    batch_size = 1 if cfg is None else cfg.test.batch_size if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise DetkitError(f"--batch-size must be at least 1, got {batch_size}")
    todo = list(enumerate(zip(images, drawn_paths), start=1))
    try:
        # a context manager, so that an error ends the bar's line before the error line is printed
        with progress_bar(total=len(todo), desc="infer", unit="img", disable=args.no_progress) as bar:
            for first in range(0, len(todo), batch_size):
                batch = []
                for image_id, (path, drawn_path) in todo[first:first + batch_size]:
                    try:
                        batch.append((image_id, path, drawn_path, read_image(path, exif_orientation=True)))
                    except DetkitError as error:
                        if args.stop_on_error:
                            raise
                        tqdm.write(f"infer.py: warning: {error} Skipped.", file=sys.stderr)
                        skipped.append(str(path))
                tensors = [to_tensor(pixels) for *_, pixels in batch]
                if not batch:
                    dets = []
                elif cfg is None:
                    dets = [{k: torch.from_numpy(v) for k, v in detector(pixels)._asdict().items()}
                            for *_, pixels in batch]
                else:
                    with torch.no_grad():
                        dets = [{k: v.cpu() for k, v in d.items()}
                                for d in model([im.to(device) for im in tensors])]
                for (image_id, path, drawn_path, _), image, det in zip(batch, tensors, dets):
                    keep = det["scores"] >= args.score_thresh
                    for box, label, score in zip(det["boxes"][keep].tolist(), det["labels"][keep].tolist(),
                                                 det["scores"][keep].tolist()):
                        results.append({"image_id": image_id, "file_name": str(path),
                                        "category_id": category_ids[label],
                                        "category": names[label - 1], "score": round(score, 5),
                                        "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2),
                                                 round(box[3] - box[1], 2)]})
                    drawn = draw_detections(image, det["boxes"][keep], det["labels"][keep], det["scores"][keep], names)
                    save_image(drawn, drawn_path)
                    done += 1
                bar.update(len(todo[first:first + batch_size]))
    finally:  # an error, --stop-on-error or Ctrl-C still leaves the results of the images done
        write_json(out / "detections.json", results)
        if cfg is not None:
            save_config(cfg, out / "config.yaml")
        else:  # an export holds no config: its metadata (classes, sizes, thresholds) says what ran
            write_json(out / "onnx_metadata.json", detector.metadata)
    note = f"; {len(skipped)} unreadable image(s) skipped" if skipped else ""
    print(f"{len(results)} detections in {done} images{note}: {out}/detections.json and drawn images in {out}/")
    if generator is not None and done:
        propose_s = generator.seconds
        print(f"note: selective search ({cfg.proposals.mode} mode) took {propose_s:.1f} s "
              f"({propose_s / done:.2f} s per image) of this run")
    if skipped:  # as cp and rsync: the work that could be done is done, and a script can tell that some was not
        print(f"infer.py: {len(skipped)} of {len(images)} input(s) skipped as unreadable: exit status 1",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="infer.py", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--config", help=f"config.yaml of a training run, or the recipe it trained from (the weights hold the "
                        f"class names and ids; default {DEFAULT_RUN}/config.yaml)")
    parser.add_argument("--weights", help="weights (default <output_dir>/model_final.pth of the config)")
    parser.add_argument("--out", default="outputs/infer", help="folder for detections.json and drawn images")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="lowest score to keep (default 0.5)")
    parser.add_argument("--batch-size", type=int, help="images per forward (default: the config's test.batch_size)")
    parser.add_argument("--onnx", help="an .onnx file from tools/export.py, run with ONNX Runtime (no --config)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads with --onnx (default: one per core)")
    parser.add_argument("--stop-on-error", action="store_true",
                        help="stop at the first unreadable image instead of skipping it")
    add_common_args(parser, progress=True)
    run(main, parser)
