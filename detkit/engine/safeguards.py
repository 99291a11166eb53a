"""What keeps a training run's completed iterations: last.pth with a fallback until the loss after it proves finite,
the set-aside of a checkpoint that a non-finite loss followed, and the save of the last completed iteration when an
error stops the run.

Files under the output folder: `last.pth` (full training state), `last.prev.pth` (the checkpoint before `last.pth`,
kept until the next iteration's loss proves `last.pth` finite) and `last.diverged.pth` (a checkpoint set aside
because the loss after it was not finite). Only the main process writes or moves them.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from detkit.engine import distributed
from detkit.engine.checkpoint import set_rng_state
from detkit.engine.run_dir import link_or_copy, stored_config

logger = logging.getLogger(__name__)


class LastCheckpoints:
    """last.pth of one output folder, with last.prev.pth while last.pth is unproven and last.diverged.pth after a
    non-finite loss; `write(path, iteration, loss)` saves the training state to a path."""

    def __init__(self, output_dir: Path, write: Callable[[Path, int, float], None]) -> None:
        self.last = output_dir / "last.pth"
        self.previous = output_dir / "last.prev.pth"
        self.diverged = output_dir / "last.diverged.pth"
        self.write = write
        self.unproven = False  # last.pth was saved after the last loss known to be finite

    def start(self) -> None:
        """At the start of the iterations: a last.prev.pth left by the run before means last.pth is unproven."""
        self.unproven = self.previous.is_file()

    def save(self, iteration: int, loss: float) -> None:
        """Save the resumable training state to last.pth (main process only), keeping a proven one as last.prev.pth."""
        if not distributed.is_main_process():
            return
        if self.last.is_file() and not self.unproven:
            link_or_copy(self.last, self.previous)
        self.unproven = True
        self.write(self.last, iteration, loss)

    def prove(self) -> None:
        """After a finite loss computed from the weights in last.pth: last.prev.pth is no longer needed."""
        if self.unproven:
            self.previous.unlink(missing_ok=True)
            self.unproven = False

    def finish(self) -> None:
        """The run finished: last.pth stands, last.prev.pth goes."""
        self.previous.unlink(missing_ok=True)

    def set_aside_unproven(self, saved: int) -> str:
        """After a non-finite loss: move an unproven last.pth aside, put back the previous one; say what is left."""
        if not distributed.is_main_process():
            return ""
        if self.unproven and self.last.is_file():
            os.replace(self.last, self.diverged)
            if self.previous.is_file():
                os.replace(self.previous, self.last)
            self.unproven = False
            logger.warning("The checkpoint of iteration %d led to a non-finite loss; moved it to %s.",
                           saved, self.diverged)
        if not self.last.is_file():
            return "No checkpoint with a finite loss after it is left; --resume would start from scratch."
        kept = stored_config(self.last)[1]
        return f"{self.last} holds iteration {kept}; --resume continues from there."


@contextlib.contextmanager
def keep_completed_iterations(checkpoints: LastCheckpoints, progress: dict[str, Any]) -> Iterator[None]:
    """Run the iterations; on an error save what can be saved first.

    `progress` holds `iteration` (the last completed one), `saved` (the last one in last.pth), `rng` (the RNG
    state at the end of `iteration`) and `loss` (its loss). A FloatingPointError (non-finite loss) saves nothing:
    it puts back the last checkpoint whose following loss was finite and says so in its message. Any other error
    after an unsaved completed iteration saves it to last.pth (main process only), with the RNG streams as they
    were then so that --resume stays exact, and propagates; a failing save is logged, not raised over the error.
    """
    try:
        yield
    except FloatingPointError as error:
        raise FloatingPointError(f"{error} {checkpoints.set_aside_unproven(progress['saved'])}") from None
    except Exception:
        iteration = progress["iteration"]
        if iteration > progress["saved"] and distributed.is_main_process():
            set_rng_state(progress["rng"])  # as at the end of that iteration: the resume stays exact
            try:
                checkpoints.save(iteration, progress["loss"])
            except Exception as save_error:  # e.g. the disk is full: report the first error, not this one
                logger.warning("Error after iteration %d, and %s could not be saved (%s).",
                               iteration, checkpoints.last, save_error)
            else:
                logger.warning("Error after iteration %d: %s saved; once fixed, --resume continues from "
                               "iteration %d.", iteration, checkpoints.last, iteration)
        raise
