"""Progress for every tool: a tqdm bar on a terminal, periodic log lines anywhere else (a Slurm or nohup log, a pipe).

tqdm redraws its bar in place with carriage returns; written to a file every redraw becomes a line of its own
(thousands for one run). Off a terminal detkit instead writes one plain line at most every LOG_PERIOD_S seconds,
plus the first and the last, as detectron2 logs its progress (every 20 iterations) to files:

    infer: 120/364 (33%) elapsed 00:41, eta 01:23, 2.90img/s
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

# Seconds between two log lines off a terminal: a 10-minute job logs about 20 lines, as many as detectron2's
# default period of 20 iterations gives for a ~100-iteration job at 1.5 s each.
LOG_PERIOD_S = 30.0
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) elapsed {elapsed}, eta {remaining}, {rate_fmt}{postfix}"
LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} elapsed {elapsed}, {rate_fmt}{postfix}"


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default sys.stderr, where bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None,
                 disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm over `iterable` (or updated by hand up to `total`): a bar with ETA on a terminal, else a log line
    every LOG_PERIOD_S seconds and at the end. disable=True (the tools' --no-progress) shows nothing.
    Other keyword arguments go to tqdm (unit, initial, postfix, ...)."""
    kwargs.pop("dynamic_ncols", None)
    if disable or on_terminal():
        return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, **kwargs)
    kwargs.pop("leave", None)  # a log keeps its last line
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return tqdm(iterable, desc=desc, total=total, file=_LineWriter(sys.stderr), mininterval=LOG_PERIOD_S,
                bar_format=LOG_FORMAT if total else LOG_FORMAT_NO_TOTAL, leave=True, **kwargs)


class _LineWriter:
    """A file for tqdm that turns each redraw ("\\r" + text) into one newline-terminated line; a redraw at the same
    count as the line before (tqdm's close redraws the last one) is dropped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        count = line.split(" elapsed ")[0]
        if line and count != self.last:
            self.stream.write(line + "\n")
            self.last = count

    def flush(self) -> None:
        self.stream.flush()
