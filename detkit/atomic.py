"""The one atomic file writer: write to a temporary file in the target's folder, fsync, then rename over the target.

A reader (or a run killed mid-write) sees the old file or the new one, never half of one. The temporary file is
``.<name>.<host>.<pid>.<random>.tmp`` next to the target: unique across processes and machines writing into one
shared folder, and telling who wrote it (``writer_gone``), so a cleaner removes only temporary files whose writer
can no longer finish them (detkit.engine.run_dir and the proposal store do).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


STALE_TEMP_S = 3600.0  # a temporary file of another host this old has no live writer (a write takes milliseconds)
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMP = re.compile(r"\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp")
_LEGACY_TEMP = re.compile(r".+\.tmp(?P<pid>\d+)")  # single-machine writers of earlier versions


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary name next to ``path`` that no other process on any machine uses: host, pid, random token."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def writer_gone(tmp: Path, now: float | None = None) -> bool:
    """Whether the process that wrote temporary file ``tmp`` can no longer rename it: on this host, its pid is dead;
    from another host (or a name that tells no pid), it is older than STALE_TEMP_S."""
    match = _TEMP.fullmatch(tmp.name) or _LEGACY_TEMP.fullmatch(tmp.name)
    host = match.groupdict().get("host", _HOST) if match else None
    if match and host == _HOST:
        return not _pid_alive(int(match["pid"]))
    try:
        age = (time.time() if now is None else now) - tmp.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed into place meanwhile
    return age > STALE_TEMP_S


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, durable: bool = True) -> Path:
    """Calls write(f) on a binary file that becomes ``path`` only once complete (parents are created); returns path.

    durable=True fsyncs before the rename (the file survives a power cut, not only a kill); stores of many small
    files that a rerun refills (proposals, features) pass False."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = temp_path(path)
    try:
        with open(tmp_name, "xb") as f:
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
