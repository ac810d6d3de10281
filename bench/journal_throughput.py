"""Journal throughput: sign decisions per second that Journal.reserve sustains.

The journal commits each decision with synchronous=FULL, so a signature never
leaves before its row is on disk. The baseline is the same loop with
synchronous=OFF (no fsync), so the ratio is the price of durability on this disk.
A third journal has room reserved in its WAL as `appliance serve` reserves it
(Journal.prepare_to_serve, then keep_wal_room after each decision): its commits
write over blocks already on disk, and its row compares it with the plain FULL one.
The journals live on the same filesystem as the repository and grow in lockstep
(alternating batches).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from appliance.journal import Candidate, Journal
from bench.context import BenchContext
from bench.table import Row
from bench.timing import median
from bftanchor.template import Coin, Outpoint

NAME = "journal_throughput"
REPO = Path(__file__).resolve().parent.parent
GENESIS = Coin(Outpoint(hashlib.sha256(b"bench journal genesis").hexdigest(), 0), 10**12, 0)
FEE = 500


class Chain:
    """Successive checkpoints, each spending the previous one's coin (what reserve allows)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.coin = GENESIS
        self.round = 0

    def reserve_next(self) -> None:
        self.round += 1
        txid = hashlib.sha256(f"{self.journal.path} {self.round}".encode()).hexdigest()
        c = Candidate(
            txid=txid,
            epoch=0,
            round=self.round,
            payload=f"{self.round:0106x}",
            input=self.coin.outpoint,
            input_value=self.coin.value,
            coin_value=self.coin.value - FEE,
            dest_epoch=0,
            fee=FEE,
            handover=False,
        )
        self.journal.reserve(c, "bench")
        self.journal.keep_wal_room()  # nothing unless room was reserved (prepare_to_serve)
        self.coin = Coin(Outpoint(txid, 1), c.coin_value, 0)


def same_disk_dir() -> tempfile.TemporaryDirectory:
    """A temporary directory on the repository's filesystem (the system's tmp if it is)."""
    tmp = tempfile.gettempdir()
    where = tmp if os.stat(tmp).st_dev == os.stat(REPO).st_dev else str(REPO.parent)
    return tempfile.TemporaryDirectory(prefix="bft-anchor-bench-journal-", dir=where)


def run(ctx: BenchContext) -> list[Row]:
    target = ctx.pick(1000, 150)  # rows each journal grows to
    batch = ctx.pick(25, 10)
    budget = ctx.pick(60.0, 10.0)  # a safety cap; the full run needs about 15 s
    with same_disk_dir() as d:
        full = Journal(Path(d) / "full.sqlite", GENESIS)
        off = Journal(Path(d) / "off.sqlite", GENESIS)
        room = Journal(Path(d) / "room.sqlite", GENESIS)
        room.prepare_to_serve()
        off._db.execute("PRAGMA synchronous=OFF")  # the baseline only; reserve is unchanged
        assert full._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        chains = {"FULL": Chain(full), "ROOM": Chain(room), "OFF": Chain(off)}
        # (rows in the journal before the batch, seconds per reserve) per mode
        per_batch: dict[str, list[tuple[int, float]]] = {m: [] for m in chains}
        ctx.say(
            f"journal_throughput: alternating batches of {batch} reserves up to "
            f"{target} rows in {d}"
        )
        start = time.perf_counter()
        while chains["FULL"].round < target and time.perf_counter() - start < budget:
            for mode, chain in chains.items():
                before = chain.round
                t0 = time.perf_counter()
                for _ in range(batch):
                    chain.reserve_next()
                per_batch[mode].append((before, (time.perf_counter() - t0) / batch))
        reached = chains["FULL"].round
        full.close()
        room.close()
        off.close()
    small = 100
    rows: list[Row] = []
    for label, pick in (
        (f"first {small} rows", lambda n: n < small),
        (f"~{reached} rows", lambda n: n >= reached - 4 * batch),
    ):
        t = {m: median([s for n, s in b if pick(n)]) for m, b in per_batch.items()}
        rows.append(
            Row(
                NAME,
                f"Journal.reserve, {label}",
                "decisions/s, synchronous=FULL",
                1 / t["FULL"],
                "/s",
                1 / t["OFF"],
                "synchronous=OFF",
                "WAL; same filesystem as the repo",
            )
        )
        rows.append(
            Row(
                NAME,
                f"Journal.reserve, {label}",
                "ms per decision, synchronous=FULL",
                t["FULL"] * 1e3,
                "ms",
                t["OFF"] * 1e3,
                "synchronous=OFF",
                "ratio = price of fsync",
            )
        )
        rows.append(
            Row(
                NAME,
                f"Journal.reserve, {label}",
                "ms per decision, FULL, room reserved in the WAL (as served)",
                t["ROOM"] * 1e3,
                "ms",
                t["FULL"] * 1e3,
                "FULL, WAL grown by each commit",
                "appliance serve reserves room ahead",
            )
        )
    return rows
