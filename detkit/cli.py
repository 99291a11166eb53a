"""Shared command-line plumbing: bad input becomes one line on stderr (a traceback only with --debug)."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from detkit.errors import DetkitError

# Bad input, a missing file, or a diverged run (non-finite loss): reported in one line.
USER_ERRORS = (DetkitError, FileNotFoundError, PermissionError, ValueError, FloatingPointError)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every tool takes."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser) -> None:
    """Parses arguments and runs main, printing user errors as one line and exiting with status 2."""
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
    except USER_ERRORS as err:
        if args.debug:
            raise
        hint = "" if isinstance(err, DetkitError) else " (run with --debug for the traceback)"
        print(f"{parser.prog}: error: {err}{hint}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
