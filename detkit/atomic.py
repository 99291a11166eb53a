"""The one atomic file writer: write to a temporary file in the target's folder, fsync, then rename over the target.

A reader (or a run killed mid-write) sees the old file or the new one, never half of one. The temporary file is
``.<name>.<random>.tmp`` next to the target (detkit.engine.run_dir removes stale ones when a run resumes).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, durable: bool = True) -> Path:
    """Calls write(f) on a binary file that becomes ``path`` only once complete (parents are created); returns path.

    durable=True fsyncs before the rename (the file survives a power cut, not only a kill); stores of many small
    files that a rerun refills (proposals, features) pass False."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes text (UTF-8) to path atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, data: Any, **dumps_kwargs: Any) -> Path:
    """Writes data as indented JSON to path atomically (json.dumps keywords, e.g. default=, pass through)."""
    return atomic_write_text(path, json.dumps(data, indent=1, **dumps_kwargs))
