"""Shared command-line plumbing: bad input becomes one line on stderr (a traceback only with --debug)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from detkit.errors import DetkitError

# Bad input, a missing or unwritable file (any operating-system error), or a diverged run (non-finite loss):
# reported in one line. OpenCV's cv2.error is added where cv2 is loaded (see _user_errors).
USER_ERRORS = (DetkitError, OSError, ValueError, FloatingPointError)


def config_parser(prog: str, doc: str, *, config_help: str, overrides_help: str) -> argparse.ArgumentParser:
    """A config-driven tool's parser: the first line of its docstring `doc`, a YAML config and KEY=VALUE overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("config", help=config_help)
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    return parser


def add_common_args(parser: argparse.ArgumentParser, *, progress: bool = False) -> None:
    """Flags every tool takes, and --no-progress for a tool that shows progress bars (progress=True)."""
    if progress:
        parser.add_argument("--no-progress", action="store_true",
                            help="no progress bars (train.py prints log lines instead)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def one_line(err: BaseException) -> str:
    """An error's message on one line: a DataLoader worker's re-raised error keeps only its final message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) > 1 and ("Original Traceback" in str(err) or lines[0].startswith("OpenCV(")):
        last = lines[-1]  # "detkit.errors.DetkitError: Image file ..." or OpenCV's "error: (-215) ..."
        return last.split(": ", 1)[1] if ": " in last and " " not in last.split(": ", 1)[0] else last
    return " ".join(lines)


def _user_errors() -> tuple[type[BaseException], ...]:
    cv2 = sys.modules.get("cv2")
    return USER_ERRORS + ((cv2.error,) if cv2 is not None and isinstance(getattr(cv2, "error", None), type) else ())


# What gloo and NCCL say when another rank is gone (it crashed, or printed its error and exited).
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
             "remote worker crashing")


def _lost_a_peer(err: BaseException) -> bool:
    """Whether `err` is this rank's collective failing because another rank of a torchrun group went away."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or "RANK" not in os.environ:
        return False
    backend_error = getattr(dist, "DistError", RuntimeError)
    return isinstance(err, (backend_error, RuntimeError)) and any(text in str(err) for text in PEER_LOST)


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser) -> None:
    """Parses arguments and runs main, printing user errors as one line and exiting with status 2; under torchrun a
    rank whose collective failed because another rank went away exits with status 1 and prints nothing (the rank
    that failed printed why; --debug shows the traceback)."""
    # Options may come before or after KEY=VALUE overrides. Sub-command parsers cannot be parsed intermixed, so
    # there the overrides after an option arrive as leftovers and join args.overrides.
    if parser._subparsers:
        args, extra = parser.parse_known_args()
        stray = [e for e in extra if "=" not in e or e.startswith("-") or not hasattr(args, "overrides")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
    else:
        args = parser.parse_intermixed_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = main(args)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if not args.debug and _lost_a_peer(err):
            sys.exit(1)  # another rank failed and said why in one line; torchrun's summary names it
        if args.debug or not isinstance(err, _user_errors()):
            raise
        hint = "" if isinstance(err, DetkitError) else " (run with --debug for the traceback)"
        print(f"{parser.prog}: error: {one_line(err)}{hint}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
