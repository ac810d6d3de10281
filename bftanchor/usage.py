"""What every bft-anchor command line shares: exit statuses, the errors that carry them,
input readers that name what they read, and an argparse parser whose complaints are one line.

An operator reads ONE line on standard error naming the input and what is wrong with it.
Commands raise these errors; `anchorcli.main` turns them (and anything unexpected) into
that line and the exit status, and shows the traceback only with `--debug`. They live in
the shared package because the appliance's, the node's and the console's commands all
raise them.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command cannot do its job; `subject` names the input (option, file, URL)."""

    status = EXIT_USAGE

    def __init__(self, subject: str | Path | None, message: str, prog: str | None = None):
        super().__init__(f"{subject}: {message}" if subject else message)
        self.subject = str(subject) if subject else None
        self.message = message
        self.prog = prog  # the (sub)command that failed, when the raiser knows it best


class UsageError(CommandError):
    """Options that are missing, malformed or cannot work together (exit 2)."""


class InputError(CommandError):
    """An input (file, socket, node, device) is missing, unreadable or malformed (exit 2)."""


class ProblemFound(CommandError):
    """The job ran and found a problem: a violation, a refusal, an alert (exit 1)."""

    status = EXIT_PROBLEM


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`prog: message (see prog --help)`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(None, f"{message} (see {self.prog} --help)", prog=self.prog)


def _bounded(kind: type, lo: float | None, hi: float | None, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = (f"at least {lo}" if hi is None else f"at most {hi}" if lo is None
                      else f"{lo}..{hi}")
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {bounds})")
        return value

    parse.__name__ = what  # argparse names the type in "invalid <name> value"
    return parse


def int_range(lo: int | None = None, hi: int | None = None):
    """An argparse type: an integer within [lo, hi]."""
    return _bounded(int, lo, hi, "an integer")


def float_range(lo: float | None = None, hi: float | None = None):
    """An argparse type: a finite number within [lo, hi]."""
    return _bounded(float, lo, hi, "a number")


tcp_port = int_range(0, 65535)


def read_text(path: Path | str, what: str) -> str:
    """The text of a file, or an InputError naming `what` and the path."""
    p = Path(path)
    try:
        if p.is_dir():
            raise InputError(f"{what} {p}", "is a directory, not a file")
        text = p.read_text()
    except FileNotFoundError:
        raise InputError(f"{what} {p}", "no such file") from None
    except PermissionError:
        raise InputError(f"{what} {p}", "permission denied") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} {p}", "is not a text file") from None
    except OSError as exc:
        raise InputError(f"{what} {p}", exc.strerror or str(exc)) from None
    if not text.strip():
        raise InputError(f"{what} {p}", "is empty")
    return text


def read_json(path: Path | str, what: str, expect: type = dict) -> Any:
    """A file's JSON value of type `expect`; `-` reads standard input."""
    if str(path) == "-":
        import sys

        text, subject = sys.stdin.read(), f"{what} (standard input)"
        if not text.strip():
            raise InputError(subject, "is empty")
    else:
        text, subject = read_text(path, what), f"{what} {path}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(subject, f"is not valid JSON ({exc.msg} at line {exc.lineno} "
                                  f"column {exc.colno})") from None
    if not isinstance(value, expect):
        names = {dict: "a JSON object", list: "a JSON list"}
        raise InputError(subject, f"must hold {names.get(expect, expect.__name__)}, "
                                  f"not {_json_kind(value)}")
    return value


def read_toml(path: Path | str, what: str) -> dict[str, Any]:
    """A file's TOML table, or an InputError naming the file and the line."""
    text = read_text(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{what} {path}", f"is not valid TOML ({exc})") from None


def _json_kind(value: Any) -> str:
    return {list: "a list", dict: "an object", str: "a string", bool: "true/false",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")
