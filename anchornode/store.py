"""Every checkpoint transaction this node has seen, kept on disk (SQLite).

A reorganisation can take checkpoints out of the chain and, when it drops two or
more, out of every mempool too (the second spends an output that is no longer
confirmed, and its one-block relative lock makes it non-final): then nobody has
them but whoever kept a copy. The node keeps each checkpoint it has seen, signed
by a quorum (confirmed, delivered by itself, or announced by a peer), and when
the coin it follows has a known child that is in neither the chain nor the
mempool it sends that child again. Several children of one coin are ladder rungs
(one payload, fee levels) or RBF replacements: the one seen confirmed is preferred,
then the others in the order they were seen (a ladder's rungs lowest fee first).

It also keeps, per coin, the QC this node's appliance signed first: an appliance
never signs a second payload for the same coin, so proposing a newer QC for a coin
that some appliances already signed could split the validators for good (two
signed for one payload, two for another, k = 3 of 4). The node proposes, and tells
its peers about, the QC it is bound to instead.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from embit.transaction import Transaction

from bftanchor.template import Outpoint

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoint (
    txid TEXT PRIMARY KEY,
    raw TEXT NOT NULL,
    spends TEXT NOT NULL,          -- "txid:vout" of the coin it spends
    seen_at REAL NOT NULL,
    confirmed_height INTEGER       -- last height it was seen confirmed at, NULL if never
);
CREATE INDEX IF NOT EXISTS checkpoint_spends ON checkpoint (spends);
CREATE TABLE IF NOT EXISTS signed_qc (
    coin TEXT PRIMARY KEY,         -- "txid:vout"
    qc TEXT NOT NULL,              -- the QC (JSON) this node's appliance signed for it
    psbt TEXT                      -- the PSBT (base64) it signed: evidence for a release
);
"""


class CheckpointStore:
    """Checkpoint transactions by the outpoint they spend; in memory when path is None."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path) if path is not None else ":memory:",
            check_same_thread=False,
            isolation_level=None,
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(signed_qc)")}
        if "psbt" not in cols:  # a store from before releases
            self._db.execute("ALTER TABLE signed_qc ADD COLUMN psbt TEXT")

    def add(self, raw: str, confirmed_height: int | None = None) -> str:
        """Keep a checkpoint (idempotent); a confirmation height updates the stored one."""
        tx = Transaction.from_string(raw)
        txid = tx.txid().hex()
        spends = f"{tx.vin[0].txid.hex()}:{tx.vin[0].vout}"
        with self._lock:
            self._db.execute(
                "INSERT INTO checkpoint (txid, raw, spends, seen_at, confirmed_height) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(txid) DO UPDATE SET "
                "confirmed_height = COALESCE(excluded.confirmed_height, confirmed_height)",
                (txid, raw, spends, time.time(), confirmed_height),
            )
        return txid

    def children(self, coin: Outpoint) -> list[str]:
        """Raw checkpoints spending coin: those seen confirmed first, then in the order seen."""
        with self._lock:
            rows = self._db.execute(
                "SELECT raw, confirmed_height IS NOT NULL FROM checkpoint WHERE spends = ? "
                "ORDER BY seen_at",
                (f"{coin.txid}:{coin.vout}",),
            ).fetchall()
        confirmed = [raw for raw, c in rows if c]
        return confirmed + [raw for raw, c in rows if not c]

    def bind_qc(self, coin: Outpoint, qc_json: dict, psbt: str | None = None) -> None:
        """Remember the QC this node's appliance signed for coin, and the signed PSBT.

        The appliance signs one payload per coin unless it released the earlier one (a
        proof that it can never complete), so the QC signed last is the one it is bound to.
        """
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO signed_qc (coin, qc, psbt) VALUES (?, ?, ?)",
                (f"{coin.txid}:{coin.vout}", json.dumps(qc_json, sort_keys=True), psbt),
            )

    def bound_qc(self, coin: Outpoint) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT qc FROM signed_qc WHERE coin = ?", (f"{coin.txid}:{coin.vout}",)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def bound_psbt(self, coin: Outpoint) -> str | None:
        """The PSBT this node's appliance signed for coin (with its signature), if kept."""
        with self._lock:
            row = self._db.execute(
                "SELECT psbt FROM signed_qc WHERE coin = ?", (f"{coin.txid}:{coin.vout}",)
            ).fetchone()
        return row[0] if row else None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM checkpoint").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
