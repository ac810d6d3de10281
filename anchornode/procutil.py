"""Child processes that do not outlive the process that started them.

Tests, the devnet and the cluster start PoW nodes, appliances and nodes. If the
parent is killed (a timeout, Ctrl-C, a crash), Linux's parent-death signal stops
the children too, so nothing keeps a port or a datadir afterwards.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn for subprocess.Popen: SIGTERM this child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def stop_process(proc: subprocess.Popen, timeout: float = 10, kill: bool = False) -> int:
    """Stop a child: SIGTERM (SIGKILL with `kill`), then SIGKILL if it has not exited
    within `timeout` seconds. Its exit status."""
    if proc.poll() is None:
        proc.kill() if kill else proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def spawn_appliance(config: Path, link: str, log: IO[bytes]) -> subprocess.Popen:
    """`bft-anchor appliance serve` on a serial link (a pty in the devnet and the cluster),
    logging to `log`, stopped with its parent."""
    return subprocess.Popen(
        [sys.executable, "-m", "anchorcli", "-v", "appliance", "serve",
         "--config", str(config), "--link", link],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
