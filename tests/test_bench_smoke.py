"""The benchmark suite still runs: `python -m bench --quick --json -` yields every
section with positive figures. Not a timed test: it only catches a broken benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = set(BENCHMARKS)


@pytest.mark.integration
def test_quick_bench_reports_every_section():
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "-"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,  # a shared, loaded machine; the run itself takes under a minute
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["failed"] == []
    assert set(report["sections"]) == SECTIONS
    assert report["machine"]["nproc"] >= 1
    for name, section in report["sections"].items():
        rows = section["rows"]
        measured = [r for r in rows if r["value"] is not None]
        assert measured, f"{name}: no figure measured"
        for r in rows:
            if r["value"] is None:  # allowed only when it says why
                assert r["note"].startswith("not measured"), (name, r)
                continue
            # A part of a breakdown may be nothing in a quick run (a step the few quick
            # rounds never took, e.g. the initiator's own signature when k peers answered
            # first): so may its share of the whole; the whole itself may not.
            part = r["metric"].startswith("  of which")
            assert r["value"] >= 0 if part else r["value"] > 0, (name, r)
            if r["baseline"] is not None:
                assert r["baseline"] > 0, (name, r)
                assert r["ratio"] >= 0 if part else r["ratio"] > 0, (name, r)
