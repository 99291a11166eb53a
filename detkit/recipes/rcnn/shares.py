"""How R-CNN's non-SGD stages share their items (images of the feature cache, classes of the SVMs and regressors)
among torchrun's W ranks: the items still to do, agreed by every rank before any of them writes; rank r's share,
every W-th of them from the r-th; and waiting for the other ranks' files. Alone (no process group) every item to do
is this process's share and nothing waits.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from detkit.atomic import writer_gone
from detkit.ranks import share_todo, wait_until_done

T = TypeVar("T")

WAIT_POLL_S = 0.2  # how often a rank that finished its share looks for the other ranks' files


def share_missing(items: Sequence[T], done: Callable[[T], bool], folder: Path) -> tuple[list[T], list[T]]:
    """(the items not done, in order; this rank's share of them), after deleting the temporary files in `folder`
    that a killed writer left (detkit.atomic.writer_gone). A collective (detkit.ranks.share_todo): every rank
    calls it at the same point and gets rank 0's list, so the shares cover each item once."""
    now = time.time()
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file() and writer_gone(tmp, now):
            tmp.unlink(missing_ok=True)
    return share_todo(list(items), done)


def wait_for(items: Sequence[T], done: Callable[[T], bool]) -> None:
    """Returns once every item is done: the other ranks' shares (detkit.ranks.wait_until_done)."""
    wait_until_done(items, done, WAIT_POLL_S)
