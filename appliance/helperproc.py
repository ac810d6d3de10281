"""A child Python process a serving appliance hands work to (walsync.py, qcverify.py).

A process and not a thread: the appliance's Python holds the GIL between its C calls,
and a thread needs the GIL to start its work and to report it. Each helper is a short
program run with `python -I`; it writes one byte "R" on its stdout once it has started,
then speaks its own small binary protocol on stdin and stdout. Its stderr goes nowhere
(the appliance logs what goes wrong), and it ends when its stdin closes.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Sequence


class HelperProcess:
    def __init__(self, program: str, args: Sequence[str], *, site: bool = True,
                 pass_fds: Sequence[int] = ()) -> None:
        flags = ["-I"] if site else ["-I", "-S"]
        self._proc = subprocess.Popen(
            [sys.executable, *flags, "-c", program, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=tuple(pass_fds),
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._to = self._proc.stdin.fileno()
        self._from = self._proc.stdout.fileno()
        self._started: bool | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def started(self, timeout: float = 0.0) -> bool | None:
        """True once it has said "R", False for good if it exited or said anything else
        first, None if it has not said anything within `timeout` seconds."""
        if self._started is None and select.select([self._from], [], [], timeout)[0]:
            try:
                first = os.read(self._from, 1)
            except OSError:
                first = b""
            self._started = first == b"R"
        return self._started

    def send(self, data: bytes) -> None:
        """Write a request (OSError if the helper is gone)."""
        os.write(self._to, data)

    def receive(self, size: int, timeout: float | None = None) -> bytes:
        """Read exactly `size` bytes; fewer if it exits first. TimeoutError if nothing
        comes for `timeout` seconds (None: wait as long as it takes). OSError passes."""
        data = b""
        while len(data) < size:
            if timeout is not None and not select.select([self._from], [], [], timeout)[0]:
                raise TimeoutError
            chunk = os.read(self._from, size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def kill(self) -> None:
        self._proc.kill()

    def wait(self) -> int:
        return self._proc.wait()

    def close(self) -> None:
        """End the helper (it exits when its stdin closes) and reap it."""
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - e.g. stuck in a hung fsync
            self._proc.kill()  # not waited for: a process in a hung fsync cannot die yet
