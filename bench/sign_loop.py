"""Child process for the memory benchmark: one appliance answering N sign requests.

    python -m bench.sign_loop --requests 1000 --validators 4 --dir DIR

Each request is the next round spending the coin of the last one signed (made up
in-process: the appliance checks lineage, not the PoW chain). Prints one JSON line:
requests signed, seconds, this process's own peak RSS (ru_maxrss, KiB) and the
handle_sign latency of each request.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from anchorharness.fleet import BenchFleet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sign_loop")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--validators", type=int, default=4)
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args(argv)
    fleet = BenchFleet(args.validators, tag=f"memory-{args.validators}")
    fleet.fake_genesis()
    appliance = fleet.appliance("v0", args.dir / "journal.sqlite")
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    latency: list[float] = []
    t0 = time.perf_counter()
    for i in range(args.requests):
        p, request = fleet.next_request()
        t = time.perf_counter()
        out = appliance.handle_sign(*request)
        latency.append(time.perf_counter() - t)
        if not out.signed or out.from_journal:
            print(f"request {i} refused: {out.reasons}", file=sys.stderr)
            return 1
        fleet.advance(p)
    elapsed = time.perf_counter() - t0
    appliance.journal.close()
    print(
        json.dumps(
            {
                "requests": args.requests,
                "seconds": round(elapsed, 3),
                "setup_maxrss_kib": setup_rss,
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "latency_s": [round(x, 6) for x in latency],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
