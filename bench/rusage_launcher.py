"""Run a command as a grandchild of the benchmark so its ru_maxrss starts clean.

    python -m bench.rusage_launcher OUT.json -- COMMAND ARGS...

Linux carries a process's peak RSS across fork and exec: a child spawned by the
(large) benchmark process starts with the benchmark's own peak as its ru_maxrss.
Spawned from this small launcher instead, the command's ru_maxrss is its own (and
that of the descendants it waited for). The launcher reaps it with os.wait4 and
writes {"rc", "maxrss_kib", "pid"} to OUT.json; the command's stdout and stderr
are passed through.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m bench.rusage_launcher OUT.json -- COMMAND ARGS...", file=sys.stderr)
        return 2
    out, command = Path(args[0]), args[2:]
    pid = os.posix_spawnp(command[0], command, os.environ)
    Path(f"{out}.pid").write_text(str(pid))  # lets the parent follow the command in /proc
    _, status, usage = os.wait4(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    out.write_text(json.dumps({"rc": rc, "maxrss_kib": usage.ru_maxrss, "pid": pid}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
