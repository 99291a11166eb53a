"""Multi-stage schedules: a list of stages, each run in its own folder under the run's output folder.

A stage is anything that turns inputs on disk into outputs on disk: an ordinary `Trainer` run (an RPN-only step of
the Faster R-CNN paper's alternating training, R-CNN's fine-tuning) or a non-SGD step (feature caching, SVM
fitting, ridge regression, a proposal store). A stage that finished writes `<folder>/stage_done.json` (its
metrics, atomically) and is skipped from then on; a stage that was stopped part-way is called again with
`resume=True` and continues inside its own folder (its Trainer resumes from `last.pth`, a cache from the items it
already holds). This is detectron2's and the papers' "train in steps" made restartable, not a new training loop.

Under torchrun every rank runs every stage (a Trainer stage is one DDP run; other stages share their work among
the ranks themselves, e.g. a proposal store or a feature cache, each rank its share of the images); the ranks
agree on which stages are done and which resume before any of them writes, and rank 0 alone writes the markers.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detkit.atomic import write_json
from detkit.ranks import get_world_size, is_main_process
from detkit.engine.run_dir import DONE_FILE
from detkit.errors import DetkitError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One step of a schedule: `run(folder, resume)` does the work in `folder` and returns its metrics."""

    name: str  # folder name under the run's output folder, e.g. "1_rpn"; letters, digits, '_', '-' and '.'
    run: Callable[[Path, bool], dict[str, Any]]
    keeps: str | None = None  # what a stop part-way keeps, for the message; None: "what <name> saved in its folder"


class _Signalled(BaseException):
    """SIGINT or SIGTERM arrived in work that has no stop point of its own (a BaseException: no `except Exception`
    in the work swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_with_message(doing: str, kept: str) -> Iterator[None]:
    """SIGINT/SIGTERM while `doing` stops the work at once, logs one line saying what is `kept` and that --resume
    continues, and exits with 128 + the signal (143 for SIGTERM, 130 for Ctrl-C), as a stopped Trainer does.

    Work inside that handles signals itself (a Trainer stops at the end of an iteration) installs its own handlers
    and puts these back. Outside the main thread it does nothing (signals only reach the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        raise _Signalled(signum)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Signalled as stop:
        for s, handler in previous.items():  # a second signal while reporting takes the default way out
            signal.signal(s, handler)
        logger.warning("Stopped by signal %d while %s: %s; --resume continues from there.", stop.signum, doing, kept)
        raise SystemExit(128 + stop.signum) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
            _log("stage %d/%d %s: finished earlier, skipped (%s)", index, len(stages), stage.name, marker)
            continue
        resuming = resume and folder.is_dir()  # a stage stopped part-way continues inside its folder
        _barrier()  # every rank has looked at the folder before any rank creates it
        _log("stage %d/%d %s: %s in %s", index, len(stages), stage.name, "resuming" if resuming else "starting",
             folder)
        folder.mkdir(parents=True, exist_ok=True)
        finished = names[: index - 1]
        kept = (f"the finished stage(s) {', '.join(finished)} and " if finished else "") + \
            f"{stage.keeps or f'what {stage.name} saved in its folder'} are kept in {output_dir}"
        with stop_with_message(f"in stage {index}/{len(stages)} {stage.name}", kept):
            metrics = dict(stage.run(folder, resuming))
        _barrier()  # every rank's share of the stage is on disk before it counts as done
        if is_main_process():
            write_json(marker, metrics, default=float)
        results[stage.name] = metrics
    return results


def _log(message: str, *args: Any) -> None:
    """An info line from rank 0 alone (every rank runs the same stages)."""
    if is_main_process():
        logger.info(message, *args)


def _barrier() -> None:
    if get_world_size() > 1:
        import torch.distributed as dist

        dist.barrier()
