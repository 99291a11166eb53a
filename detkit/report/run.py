"""Report inputs from a training run's folder or from a config (the edge where config keys become report
arguments), the report at the end of training / evaluation, and the evaluation figures in TensorBoard.

Run folder files read: config.yaml, detections_test.json (tools/train.py) or detections.json (tools/eval.py),
metrics.json, metrics.jsonl in the folder and in each stage folder below it (alternating and R-CNN schedules).
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detkit.errors import DetkitError

DETECTION_FILES = ("detections_test.json", "detections.json")


def read_json(path: Path, what: str) -> Any:
    """The JSON in `path`; DetkitError naming the file when it is missing or not JSON."""
    if not path.is_file():
        raise DetkitError(f"{what} {path} does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DetkitError(f"{what} {path} is not valid JSON ({error}).") from None


def read_results(path: Path) -> list[dict]:
    """COCO results (a JSON list of {"image_id", "category_id", "bbox", "score"}) from `path`; [] for an empty list."""
    results = read_json(path, "detections file")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise DetkitError(f"detections file {path} must hold a JSON list of COCO results "
                          '({"image_id", "category_id", "bbox", "score"}).')
    return results


def stage_records(run_dir: Path) -> list[tuple[str, list[dict]]]:
    """(name, records) of the run's metrics.jsonl and of each stage folder's, in folder-name order; lines that are
    not JSON objects with an "iter" are skipped (an interrupted write leaves half a line)."""
    files = [("training", run_dir / "metrics.jsonl")] if (run_dir / "metrics.jsonl").is_file() else []
    files += [(p.parent.name, p) for p in sorted(run_dir.glob("*/metrics.jsonl"))]
    stages = []
    for name, path in files:
        records = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("iter"), (int, float)):
                records.append(record)
        stages.append((name, records))
    return stages


def inputs_from_config(cfg: Any, dataset: Any, results: Sequence[Mapping], metrics: Mapping[str, float],
                       run_dir: Path | None, title: str) -> Any:
    """ReportInputs of a config's test split (`dataset`, a detkit dataset with the run's class list)."""
    from detkit.report.report import ReportInputs

    anchors = cfg.model.arch == "faster_rcnn"
    sizes = sorted({float(s) for level in cfg.model.rpn.anchor_sizes for s in level}) if anchors else []
    ratios = sorted({float(r) for r in cfg.model.rpn.aspect_ratios}) if anchors else []
    min_size = cfg.input.test_min_size or (cfg.input.min_size if isinstance(cfg.input.min_size, int)
                                           else max(cfg.input.min_size))
    image_paths = {image_id: dataset.image_path(i) for i, image_id in enumerate(dataset.image_ids)}
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    store = Path(cfg.data.test.proposals) / "recall.json" if cfg.data.test.proposals else None
    if store is not None and store.is_file():  # tools/propose.py's recall of the proposal store
        with contextlib.suppress(json.JSONDecodeError, OSError, AttributeError):
            metrics.update({f"store/{k}": float(v) for k, v in json.loads(store.read_text()).items()
                            if k.startswith(("AR@", "recall@")) and isinstance(v, (int, float))})
    return ReportInputs(ground_truth=dataset.coco_gt(), results=list(results), title=title,
                        stages=stage_records(run_dir) if run_dir is not None else None,
                        metrics=metrics,
                        image_paths=image_paths, anchor_sizes=sizes, anchor_ratios=ratios,
                        resize=(int(min_size), int(cfg.input.max_size)))


def test_dataset(cfg: Any) -> Any:
    """The config's test split without augmentation or proposals, renumbered to the run's class list."""
    from detkit.data import build_dataset
    from detkit.data.classes import ClassList, apply_class_list

    if not cfg.model.class_names:
        raise DetkitError("the run's config names no classes (model.class_names); use the config.yaml it wrote")
    d = cfg.data.test
    dataset = build_dataset(d.format, d.root, d.split, d.ann_file, train=False, skip_corrupt=cfg.data.skip_corrupt,
                            demo_cache=cfg.data.demo_cache)
    apply_class_list(dataset, ClassList.make(cfg.model.class_names, cfg.model.category_ids),
                     cfg.data.unknown_classes, where="data.test")
    return dataset


def load_run(run_dir: str | Path) -> Any:
    """ReportInputs of a training run's folder (or tools/eval.py's output folder); DetkitError naming what is missing."""
    from detkit.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DetkitError(f"run folder {run_dir} does not exist.")
    if not (run_dir / "config.yaml").is_file():
        raise DetkitError(f"{run_dir} has no config.yaml: not the folder of a training run or of tools/eval.py "
                          "(for detections from elsewhere pass --detections FILE --gt COCO_JSON).")
    detections = next((run_dir / n for n in DETECTION_FILES if (run_dir / n).is_file()), None)
    if detections is None:
        raise DetkitError(f"{run_dir} has no {' or '.join(DETECTION_FILES)}: the run has not finished its test "
                          "evaluation (or pass CONFIG --weights W to evaluate now).")
    cfg = load_config(run_dir / "config.yaml")
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path, "metrics file") if metrics_path.is_file() else {}
    inputs = inputs_from_config(cfg, test_dataset(cfg), read_results(detections), metrics, run_dir,
                                title=f"detkit error analysis: {run_dir.resolve().name}")
    if not metrics_path.is_file():
        inputs.notes.append(f"{run_dir} has no metrics.json: the summary row is left out.")
    return inputs


def report_run(cfg: Any, dataset: Any, results: Sequence[Mapping], metrics: Mapping[str, float],
               out_dir: str | Path, run_dir: str | Path | None = None) -> Path | None:
    """report.html of a finished evaluation in out_dir, unless the config's test.report is false (then None);
    with run_dir (a training run), its training curves too and, with tensorboard installed, the evaluation figures
    in its TensorBoard log. Prints where the report went."""
    if not cfg.test.report:
        return None
    from detkit.report.report import write_report

    run = Path(run_dir) if run_dir is not None else None
    title = f"detkit error analysis: {Path(cfg.output_dir).name}"
    inputs = inputs_from_config(cfg, dataset, results, metrics, run, title)
    path = write_report(inputs, out_dir)
    if run is not None:
        write_tensorboard(inputs, run)
    print(f"wrote {path} (open it in a browser)")
    return path


def write_tensorboard(inputs: Any, log_dir: Path, step: int | None = None) -> bool:
    """AP per class (scalars "eval/AP-<class>") and the AP-per-class and PR-curve figures into log_dir's
    TensorBoard log, at `step` (default: the last iteration in metrics.jsonl); False when tensorboard is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    from detkit.evaluation.per_class import class_report
    from detkit.report import plots

    if step is None:
        step = max((int(r["iter"]) for _, records in inputs.stages or [] for r in records), default=0)
    report = class_report(inputs.ground_truth, inputs.results)
    writer = SummaryWriter(str(log_dir))
    try:
        for name, ap in zip(report.names, report.table["AP"]):
            if not math.isnan(ap):
                writer.add_scalar(f"eval/AP-{name}", float(ap), step)
        if inputs.results:
            for tag, fig in (("eval/ap_per_class", plots.ap_per_class(report)), ("eval/pr_curves",
                                                                               plots.pr_curves(report))):
                if fig is not None:
                    writer.add_figure(tag, fig, step)
    finally:
        writer.close()
    return True
