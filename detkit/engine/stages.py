"""Multi-stage schedules: a list of stages, each run in its own folder under the run's output folder.

A stage is anything that turns inputs on disk into outputs on disk: an ordinary `Trainer` run (an RPN-only step of
the Faster R-CNN paper's alternating training, R-CNN's fine-tuning) or a non-SGD step (feature caching, SVM
fitting, ridge regression, a proposal store). A stage that finished writes `<folder>/stage_done.json` (its
metrics, atomically) and is skipped from then on; a stage that was stopped part-way is called again with
`resume=True` and continues inside its own folder (its Trainer resumes from `last.pth`, a cache from the items it
already holds). This is detectron2's and the papers' "train in steps" made restartable, not a new training loop.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detkit.atomic import write_json
from detkit.errors import DetkitError

logger = logging.getLogger(__name__)

DONE_FILE = "stage_done.json"


@dataclass(frozen=True)
class Stage:
    """One step of a schedule: `run(folder, resume)` does the work in `folder` and returns its metrics."""

    name: str  # folder name under the run's output folder, e.g. "1_rpn"; letters, digits, '_', '-' and '.'
    run: Callable[[Path, bool], dict[str, Any]]


def stage_done(folder: str | os.PathLike) -> bool:
    """True when the stage in `folder` finished (its done marker exists)."""
    return (Path(folder) / DONE_FILE).is_file()


def run_stages(stages: Sequence[Stage], output_dir: str | os.PathLike, *, resume: bool = False
               ) -> dict[str, dict[str, Any]]:
    """Run the stages in order, skipping finished ones; return each stage's metrics by name.

    Raises DetkitError for a repeated or unsafe stage name, or a done marker that is not valid JSON.
    """
    names = [stage.name for stage in stages]
    for name in names:
        if not name or names.count(name) > 1 or not all(c.isalnum() or c in "_-." for c in name) or name in (".", ".."):
            raise DetkitError(f"schedule stage name {name!r} must be unique and made of letters, digits, '_', '-', '.'")
    results: dict[str, dict[str, Any]] = {}
    for index, stage in enumerate(stages, start=1):
        folder = Path(output_dir) / stage.name
        marker = folder / DONE_FILE
        if marker.is_file():
            try:
                results[stage.name] = json.loads(marker.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DetkitError(f"{marker} is not valid JSON ({error}); delete it to run stage "
                                  f"{stage.name!r} again") from error
            logger.info("stage %d/%d %s: finished earlier, skipped (%s)", index, len(stages), stage.name, marker)
            continue
        resuming = resume and folder.is_dir()  # a stage stopped part-way continues inside its folder
        logger.info("stage %d/%d %s: %s in %s", index, len(stages), stage.name,
                    "resuming" if resuming else "starting", folder)
        folder.mkdir(parents=True, exist_ok=True)
        metrics = dict(stage.run(folder, resuming))
        write_json(marker, metrics, default=float)
        results[stage.name] = metrics
    return results
