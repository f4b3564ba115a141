"""Errors that are the user's to fix, and the command-line wrapper that prints them.

A user mistake (a bad file, an unknown experiment, an ill-typed override) gets one
clear line on standard error and exit status 2, never a traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence


class UserError(Exception):
    """A problem with what the user gave us; the message says what to fix.

    exit_status: the command's exit status (2; a run stopped by a signal uses the
    shell's 128 + signal number instead)."""
    exit_status = 2


class DataError(UserError):
    """Bad input data, located by file and (1-based, header = line 1) line."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}: line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


EXIT_USER_ERROR = 2


def run_cli(main: Callable[[Sequence[str] | None], int | None],
            argv: Sequence[str] | None = None) -> None:
    """Runs a command's main; user errors become one line on stderr and exit 2."""
    try:
        status = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(getattr(err, "exit_status", EXIT_USER_ERROR))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
