"""How `bft-anchor` reports a failure: one line on standard error, a documented exit status.

Commands raise `UsageError` / `InputError` (exit 2) or `ProblemFound` (exit 1) from
`bftanchor.usage`, naming the input; anything else that escapes a command is turned into
one line here too (its traceback only with `--debug`), so an operator never reads Python.
"""

from __future__ import annotations

import json
import socket
import sys
import traceback

from bftanchor.usage import (
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    CommandError,
    InputError,
    ProblemFound,
    UsageError,
)

__all__ = ["EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "CommandError", "InputError",
           "ProblemFound", "UsageError", "describe", "report"]

EXIT_INTERRUPTED = 130


def _one_line(text: str) -> str:
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= 400 else text[:397] + "..."


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one line (without the program name) for an exception."""
    if isinstance(exc, CommandError):
        return exc.status, _one_line(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, json.JSONDecodeError):
        return EXIT_USAGE, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if isinstance(exc, socket.timeout | TimeoutError):
        return EXIT_USAGE, _one_line(f"timed out: {exc}" if str(exc) else "timed out")
    if isinstance(exc, OSError):
        what = exc.filename if exc.filename is not None else None
        reason = exc.strerror or str(exc) or type(exc).__name__
        return EXIT_USAGE, _one_line(f"{what}: {reason}" if what else reason)
    text = str(exc) or type(exc).__name__
    name = type(exc).__name__
    # Library exceptions whose text alone says nothing (KeyError('psbt'), "not enough values
    # to unpack") get their kind in front; the hint says how to see where it came from.
    if isinstance(exc, KeyError | IndexError | TypeError | AttributeError | AssertionError):
        text = f"{name}: {text}"
    return EXIT_USAGE, _one_line(f"{text} (run with --debug for the traceback)")


def report(prog: str, exc: BaseException, debug: bool = False) -> int:
    """Print the failure as one line on standard error; return the exit status."""
    if debug and not isinstance(exc, KeyboardInterrupt):
        traceback.print_exception(exc, file=sys.stderr)
    status, line = describe(exc)
    prog = getattr(exc, "prog", None) or prog
    print(f"{prog}: {line}", file=sys.stderr, flush=True)
    return status
