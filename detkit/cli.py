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
    # Options may come before or after KEY=VALUE overrides; sub-command parsers cannot be parsed intermixed.
    args = parser.parse_args() if parser._subparsers else parser.parse_intermixed_args()
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
