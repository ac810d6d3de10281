"""`python -m bench`: run the benchmarks, print one table, optionally write JSON.

    python -m bench                 # the full run (under 10 minutes on 2 cores)
    python -m bench --quick         # a short smoke run: same code paths, tiny budgets
    python -m bench --only NAME     # one benchmark (repeatable)
    python -m bench --json FILE     # also write the report as JSON ('-' = stdout only)

Progress goes to standard error; the table (or the JSON with --json -) to standard output.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import BENCHMARKS
from bench.context import BenchContext
from bench.table import Row, render


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (tiny budgets)")
    ap.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    ap.add_argument(
        "--json",
        metavar="FILE",
        help="write the report as JSON to FILE; '-' prints it instead of the table",
    )
    args = ap.parse_args(argv)
    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench", *given])
    ctx = BenchContext(quick=args.quick)
    t0 = time.monotonic()
    sections: dict[str, Any] = {}
    rows: list[Row] = []
    failed: list[str] = []
    try:
        for name in names:
            ctx.say(f"{name}: start")
            t = time.monotonic()
            try:
                got = load(name).run(ctx)
            except Exception as exc:  # one broken benchmark must not hide the others
                traceback.print_exc(file=sys.stderr)
                failed.append(name)
                got = [Row(name, "-", "FAILED", None, "", note=f"{type(exc).__name__}: {exc}")]
            elapsed = time.monotonic() - t
            ctx.say(f"{name}: done in {elapsed:.1f} s")
            sections[name] = {"elapsed_s": round(elapsed, 2), "rows": [r.to_json() for r in got]}
            rows.extend(got)
    finally:
        ctx.close()
    total = time.monotonic() - t0
    report = {
        "command": command,
        "quick": args.quick,
        "elapsed_s": round(total, 1),
        "machine": machine(),
        "failed": failed,
        "sections": sections,
    }
    table = render(rows)
    if args.json == "-":
        print(json.dumps(report, indent=1))
    else:
        print(table)
        m = report["machine"]
        print(f"\n{command}: {total:.0f} s on {m['nproc']} x {m['cpu']}, Python {m['python']}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
