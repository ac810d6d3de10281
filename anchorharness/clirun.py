"""`bft-anchor ARGS...` run for a test: in this process by default, in its own on request.

A new Python process per command costs its start-up and imports (a few tenths of a
second), which dominated the CLI-driven appliance tests. In process, the command runs
through the same `anchorcli.main.main` that `python -m anchorcli` calls, with its own
stdin, stdout and stderr (binary buffers included) and a logging set-up of its own, so its
exit status and output are what the process would give. Only what happens outside `main`
differs: an exception escaping `main` is raised in the test (a process would print a
traceback). BFT_ANCHOR_CLI_PROCESS=1 runs every command in its own process instead; a few
tests (tests/test_cli_process.py and the `serve` tests) always do.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

CLI = [sys.executable, "-m", "anchorcli"]


def run_cli_process(*args: str, stdin: str | None = None,
                    timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m anchorcli ARGS...` in its own process, output captured as text."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          input=stdin)


def _text_stream(data: bytes = b"") -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=None,
                            write_through=True)


def _read(stream: io.TextIOWrapper) -> str:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode("utf-8", errors="replace").replace("\r\n", "\n")


def run_cli_in_process(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`bft-anchor ARGS...` through anchorcli.main.main in this process."""
    from anchorcli.main import main

    out, err = _text_stream(), _text_stream()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for h in handlers:  # main sets up its own stderr handler only on a bare root logger
        root.removeHandler(h)
    saved_stdin = sys.stdin
    sys.stdin = _text_stream((stdin or "").encode())
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # as the interpreter would turn it into a status
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
    finally:
        sys.stdin = saved_stdin
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    return subprocess.CompletedProcess([*CLI, *args], int(code or 0), _read(out), _read(err))


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`bft-anchor ARGS...`, output captured as text: in process unless
    BFT_ANCHOR_CLI_PROCESS=1 asks for a process per command."""
    if os.environ.get("BFT_ANCHOR_CLI_PROCESS") == "1":
        return run_cli_process(*args, stdin=stdin)
    return run_cli_in_process(*args, stdin=stdin)
