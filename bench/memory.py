"""Peak resident memory of an appliance answering 1,000 sign requests, and of a devnet.

Both run as child processes (through bench.rusage_launcher, so that the runner's
own peak is not inherited), and nothing of the benchmark runner is counted:
- the appliance: `python -m bench.sign_loop`, its ru_maxrss from os.wait4; baseline
  the same child with 0 requests (set-up only), so the ratio is what signing adds.
  It also times its requests: the first and last 100 show how the decision slows
  as the journal grows;
- the devnet: `python -m anchorcli devnet --epochs 3`. os.wait4's ru_maxrss is
  the maximum over the child and the descendants it waited for, which includes the
  litecoind it starts, so the devnet's own Python process is also followed through
  /proc/<pid>/status VmHWM (its peak RSS, polled until it exits). Baseline: a Python
  process that only imports the devnet's modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.context import BenchContext
from bench.table import Row
from bench.timing import median

NAME = "memory"
POLL_S = 0.01
REPO = Path(__file__).resolve().parent.parent  # children import bench from here


def vm_hwm_kib(pid: int) -> int | None:
    """Peak RSS of a live process (None once it has exited or cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except (OSError, ValueError):
        pass
    return out


@dataclass
class ChildResult:
    rc: int
    stderr: str
    maxrss_kib: int  # os.wait4: the command and the descendants it waited for
    hwm_kib: dict[int, int]  # polled VmHWM by pid (the command and its children)
    pid: int


def run_child(
    args: list[str], scratch: Path, stdout: Path | None = None, timeout: float = 300.0
) -> ChildResult:
    """Run a command through bench.rusage_launcher (a clean ru_maxrss), following the
    VmHWM of the command and of its children while it runs."""
    result = scratch / "rusage.json"
    pid_file = Path(f"{result}.pid")
    result.unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)
    launcher = [sys.executable, "-m", "bench.rusage_launcher", str(result), "--", *args]
    with open(stdout or os.devnull, "wb") as out, tempfile.TemporaryFile() as err:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(launcher, stdout=out, stderr=err, cwd=REPO, env=env)
        hwm: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        pid: int | None = None
        while proc.poll() is None:
            if pid is None and pid_file.exists():
                with contextlib.suppress(ValueError):
                    pid = int(pid_file.read_text())
            if pid is not None:
                for p in (pid, *children(pid)):
                    got = vm_hwm_kib(p)
                    if got is not None:
                        hwm[p] = max(hwm.get(p, 0), got)
                if time.monotonic() > deadline:  # its children first (a PoW node), then it
                    for p in (*children(pid), pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
            time.sleep(POLL_S)
        err.seek(0)
        text = err.read().decode(errors="replace")
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"launcher failed ({proc.returncode}): {text[-2000:]}")
    usage = json.loads(result.read_text())
    return ChildResult(usage["rc"], text, usage["maxrss_kib"], hwm, usage["pid"])


def mib(kib: int) -> float:
    return kib / 1024


def sign_loop(ctx: BenchContext, requests: int) -> tuple[ChildResult, dict]:
    d = ctx.scratch(f"sign-loop-{requests}")
    args = [sys.executable, "-m", "bench.sign_loop", "--requests", str(requests), "--dir", str(d)]
    res = run_child(args, d, stdout=d / "out.json", timeout=600)
    if res.rc != 0:
        raise RuntimeError(f"sign loop ({requests}) failed: {res.stderr[-2000:]}")
    return res, json.loads((d / "out.json").read_text())


def run(ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    requests = ctx.pick(1000, 100)
    window = min(100, max(requests // 5, 1))
    ctx.say("memory: appliance set-up only (baseline)")
    base, _ = sign_loop(ctx, 0)
    ctx.say(f"memory: appliance answering {requests} sign requests")
    res, info = sign_loop(ctx, requests)
    case = f"appliance, {requests} sign requests (n=4)"
    rate = info["requests"] / info["seconds"]
    rows.append(
        Row(
            NAME,
            case,
            "peak RSS (wait4)",
            mib(res.maxrss_kib),
            "MiB",
            mib(base.maxrss_kib),
            "set-up, 0 requests",
            f"{info['seconds']:.1f} s, {rate:.0f} requests/s",
        )
    )
    first, last = info["latency_s"][:window], info["latency_s"][-window:]
    rows.append(
        Row(
            NAME,
            case,
            f"handle_sign median, last {window} requests",
            median(last) * 1e3,
            "ms",
            median(first) * 1e3,
            f"first {window}",
            "first vs last 100 of 1000: the journal snapshot is kept current, not re-read",
        )
    )

    ctx.say("memory: importing the devnet's modules (baseline)")
    imp = run_child(
        [sys.executable, "-c", "import anchorcli.main, anchornode.devnet"], ctx.scratch("import")
    )
    if imp.rc != 0:
        raise RuntimeError(f"import failed: {imp.stderr[-2000:]}")
    epochs = 3
    ctx.say(f"memory: a {epochs}-epoch devnet as a child process")
    d = ctx.scratch("devnet")
    dn = run_child(
        [sys.executable, "-m", "anchorcli", "devnet", "--epochs", str(epochs), "--json"],
        d,
        stdout=d / "report.json",
        timeout=300,
    )
    if dn.rc != 0:
        raise RuntimeError(f"devnet failed ({dn.rc}): {dn.stderr[-2000:]}")
    report = json.loads((d / "report.json").read_text())
    if not report["audit"]["ok"]:
        raise RuntimeError(f"devnet audit failed: {report['audit']}")
    own = dn.hwm_kib.get(dn.pid)
    others = [kib for pid, kib in dn.hwm_kib.items() if pid != dn.pid]
    node_note = f"litecoind VmHWM {mib(max(others)):.1f} MiB" if others else "node not seen"
    case = f"devnet, {epochs} epochs, {len(report['checkpoints'])} checkpoints"
    rows.append(
        Row(
            NAME,
            case,
            "devnet process tree peak RSS (wait4)",
            mib(dn.maxrss_kib),
            "MiB",
            mib(imp.maxrss_kib),
            "import only",
            f"max of the devnet and the children it waited for: {node_note}",
        )
    )
    rows.append(
        Row(
            NAME,
            case,
            "devnet Python process peak RSS (VmHWM)",
            None if own is None else mib(own),
            "MiB",
            mib(imp.maxrss_kib),
            "import only",
            f"its own peak, polled every {POLL_S * 1e3:.0f} ms",
        )
    )
    return rows
