"""The anti-equivocation journal: what this appliance has signed, in SQLite.

A signature leaves the appliance only after the row that allows it is committed
with synchronous=FULL (fsync), so a crash at any point leaves a journal that
still forbids every conflicting signature. The rules themselves live in
`signing_conflicts`, a pure function the policy uses too; the insert re-checks
them inside one IMMEDIATE transaction, and a trigger refuses two payloads for
one (epoch, round) even if the Python above were wrong.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from bftanchor.epoch import EpochRecord
from bftanchor.template import Coin, Outpoint

SCHEMA = """
CREATE TABLE IF NOT EXISTS signed (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    txid         TEXT    NOT NULL UNIQUE,
    epoch        INTEGER NOT NULL,
    round        INTEGER NOT NULL,
    payload      TEXT    NOT NULL,
    input        TEXT    NOT NULL,
    input_value  INTEGER NOT NULL,
    coin_value   INTEGER NOT NULL,
    dest_epoch   INTEGER NOT NULL,
    fee          INTEGER NOT NULL,
    handover     INTEGER NOT NULL,
    request_hash TEXT    NOT NULL,
    signed_psbt  TEXT,
    created_at   REAL    NOT NULL,
    -- 'signed' by this appliance, or 'adopted': a checkpoint the quorum signed
    -- without it (proven by k valid signatures), which moves the coin on.
    kind         TEXT    NOT NULL DEFAULT 'signed' CHECK (kind IN ('signed', 'adopted'))
);
CREATE INDEX IF NOT EXISTS signed_er ON signed(epoch, round);
CREATE TRIGGER IF NOT EXISTS no_equivocation BEFORE INSERT ON signed
WHEN NEW.kind = 'signed' AND EXISTS (
    SELECT 1 FROM signed WHERE kind = 'signed'
    AND epoch = NEW.epoch AND round = NEW.round AND payload != NEW.payload)
BEGIN SELECT RAISE(ABORT, 'equivocation: another payload is signed for this epoch and round');
END;
CREATE TRIGGER IF NOT EXISTS signed_is_append_only BEFORE DELETE ON signed
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TABLE IF NOT EXISTS decisions (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts           REAL    NOT NULL,
    decision     TEXT    NOT NULL,
    txid         TEXT,
    epoch        INTEGER,
    round        INTEGER,
    detail       TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    epoch INTEGER PRIMARY KEY,
    json  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class JournalRefusal(Exception):
    """The journal forbids this signature; reasons says why."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class Candidate:
    """What a signature would commit this appliance to."""

    txid: str
    epoch: int
    round: int
    payload: str
    input: Outpoint
    input_value: int
    coin_value: int
    dest_epoch: int
    fee: int
    handover: bool


@dataclass(frozen=True)
class SignedEntry:
    seq: int
    txid: str
    epoch: int
    round: int
    payload: str
    input: Outpoint
    input_value: int
    coin_value: int
    dest_epoch: int
    fee: int
    handover: bool
    signed_psbt: str | None
    created_at: float
    kind: str = "signed"

    @property
    def coin(self) -> Coin:
        """The coin this checkpoint creates (output 1)."""
        return Coin(Outpoint(self.txid, 1), self.coin_value, self.dest_epoch)


@dataclass(frozen=True)
class JournalState:
    """A snapshot of everything signed, enough to decide the next request purely."""

    genesis: Coin
    entries: tuple[SignedEntry, ...]

    @property
    def last(self) -> SignedEntry | None:
        return self.entries[-1] if self.entries else None

    @cached_property
    def signed(self) -> tuple[SignedEntry, ...]:
        return tuple(e for e in self.entries if e.kind == "signed")

    @cached_property
    def _by_txid(self) -> dict[str, SignedEntry]:
        return {e.txid: e for e in self.entries}

    @cached_property
    def highest(self) -> tuple[int, int] | None:
        """The highest (epoch, round) signed or adopted: nothing below it is signed again."""
        if not self.entries:
            return None
        return max((e.epoch, e.round) for e in self.entries)

    def spendable(self) -> dict[Outpoint, Coin]:
        """Coins it may spend: the last signed checkpoint's input (a replacement) and the
        outputs of every signed spend of that input (whichever of them confirmed)."""
        last = self.last
        if last is None:
            return {self.genesis.outpoint: self.genesis}
        parent = Coin(last.input, last.input_value, self._epoch_of_input(last))
        coins = {parent.outpoint: parent}
        for e in self.entries:
            if e.input == last.input:
                coins[e.coin.outpoint] = e.coin
        return coins

    def _epoch_of_input(self, entry: SignedEntry) -> int:
        # The input of a checkpoint is always locked by the epoch of its QC.
        return entry.epoch

    def by_txid(self, txid: str) -> SignedEntry | None:
        return self._by_txid.get(txid)


def signing_conflicts(state: JournalState, c: Candidate) -> list[str]:
    """Every reason the journal forbids signing c (empty: allowed).

    An identical transaction already signed is allowed: it is answered from the journal.
    """
    if state.by_txid(c.txid) is not None:
        return []
    reasons: list[str] = []
    coins = state.spendable()
    if c.input not in coins:
        expected = ", ".join(str(o) for o in coins)
        reasons.append(f"input {c.input} is not the expected coin (expected one of: {expected})")
    same_er = [e for e in state.signed if (e.epoch, e.round) == (c.epoch, c.round)]
    for e in same_er:
        if e.payload != c.payload:
            reasons.append(
                f"equivocation: a different payload was already signed for epoch {c.epoch} "
                f"round {c.round} (txid {e.txid})"
            )
            break
    highest = state.highest
    if highest is not None and (c.epoch, c.round) <= highest:
        same = [e for e in same_er if e.payload == c.payload and e.input == c.input]
        if not same:
            if (c.epoch, c.round) < highest:
                reasons.append(
                    f"epoch {c.epoch} round {c.round} is lower than the highest signed "
                    f"(epoch {highest[0]} round {highest[1]})"
                )
            elif not any("equivocation" in r for r in reasons):
                reasons.append(f"epoch {c.epoch} round {c.round} was signed on another input")
        else:
            top_fee = max(e.fee for e in same)
            if c.fee <= top_fee:
                reasons.append(
                    f"re-signing epoch {c.epoch} round {c.round} needs a higher fee than "
                    f"{top_fee} sat already signed (got {c.fee})"
                )
    return reasons


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    def wrapper(self: Journal, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper  # type: ignore[return-value]


class Journal:
    def __init__(self, path: Path | str, genesis: Coin) -> None:
        self.path = Path(path)
        self.genesis = genesis
        # One connection shared by the appliance's threads; this lock serialises it.
        self.lock = threading.RLock()
        self._snapshot: JournalState | None = None
        self._version = -1
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, timeout=30, check_same_thread=False
            )
        except sqlite3.OperationalError as exc:
            raise ValueError(f"cannot open journal {self.path}: {exc}") from exc
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # No automatic checkpoints while the journal is in use. With synchronous=FULL every
        # commit fsyncs the WAL, and the WAL alone is what makes a signature durable; a
        # checkpoint only moves pages into journal.sqlite and then, at the next write,
        # restarts the WAL from its beginning. That is safe against a power cut (SQLite
        # orders the fsyncs) but not against a copy of the files made while the appliance
        # signs (a backup, an operator's cp, the power-loss test): the copy of
        # journal.sqlite and the copy of the -wal are taken at different instants, and a
        # checkpoint or a WAL restart between the two gives a copy that is corrupt or that
        # has lost committed rows -- a journal that would allow an equivocation once
        # restored (a stress run copying journal.sqlite first, then the -wal, with the
        # default autocheckpoint: about 1 copy in 500 corrupt or missing rows). With the
        # main file frozen and the WAL only ever appended to, a copy taken at any moment,
        # in any order, is journal.sqlite as it was plus a prefix of the WAL: every commit
        # that was fsynced before the copy began, and at worst a torn last frame, which
        # SQLite's frame checksums discard. The WAL is folded back by checkpoint(), which
        # the serving appliance calls once at start before it answers anything, and by
        # SQLite itself when the last connection closes. It grows about 40 KB per signature
        # in between.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        stored = self.get_meta("genesis")
        mine = json.dumps(
            {"outpoint": str(genesis.outpoint), "value": genesis.value, "epoch": genesis.epoch}
        )
        if stored is None:
            self.set_meta("genesis", mine)
        elif json.loads(stored)["outpoint"] != str(genesis.outpoint):
            raise ValueError(
                f"journal {self.path} belongs to genesis {json.loads(stored)['outpoint']}, "
                f"not {genesis.outpoint}"
            )

    @_locked
    def close(self) -> None:
        self._db.close()

    @_locked
    def checkpoint(self) -> tuple[int, int, int]:
        """Fold the WAL into journal.sqlite and truncate it (see wal_autocheckpoint above).

        For a quiet moment: the serving appliance calls it at start, before it answers.
        Returns SQLite's (busy, wal frames, frames checkpointed).
        """
        row = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    # --- reading -------------------------------------------------------------

    @_locked
    def state(self) -> JournalState:
        """Everything signed. Read in full only when another connection has committed
        since (SQLite's data_version says so); this connection's own writes update the
        snapshot as they commit, so a decision does not re-read the whole journal."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if self._snapshot is None or version != self._version:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM signed ORDER BY seq").fetchall()
            self._snapshot = JournalState(self.genesis, tuple(_entry(r) for r in rows))
            self._version = version
        return self._snapshot

    def _take_new_rows(self) -> None:
        """After this connection's own commit: add the rows it wrote to the snapshot."""
        if self._snapshot is None:
            return
        entries = self._snapshot.entries
        last = entries[-1].seq if entries else 0
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM signed WHERE seq > ? ORDER BY seq", (last,)
        ).fetchall()
        if rows:
            self._snapshot = JournalState(self.genesis, entries + tuple(_entry(r) for r in rows))

    @_locked
    def head(self) -> dict[str, Any]:
        """A short summary an operator or the node can compare across restarts."""
        row = self._db.execute(
            "SELECT seq, txid, epoch, round FROM signed ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        count = self._db.execute("SELECT COUNT(*) FROM signed WHERE kind = 'signed'").fetchone()[0]
        if row is None:
            return {"signed": 0, "seq": 0, "txid": None, "epoch": None, "round": None}
        return {"signed": count, "seq": row[0], "txid": row[1], "epoch": row[2], "round": row[3]}

    @_locked
    def decisions(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT seq, ts, decision, txid, epoch, round, detail FROM decisions "
            "ORDER BY seq DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            {
                "seq": r[0],
                "ts": r[1],
                "decision": r[2],
                "txid": r[3],
                "epoch": r[4],
                "round": r[5],
                "detail": json.loads(r[6]),
            }
            for r in rows
        ]

    # --- writing -------------------------------------------------------------

    @_locked
    def reserve(self, c: Candidate, request_hash: str) -> SignedEntry:
        """Commit the intent to sign c durably, or raise JournalRefusal.

        Returns the existing entry when the same transaction was signed before.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            state = self.state()
            existing = state.by_txid(c.txid)
            if existing is not None:
                db.execute("COMMIT")
                return existing
            reasons = signing_conflicts(state, c)
            if reasons:
                raise JournalRefusal(reasons)
            self._insert(c, request_hash, "signed")
            db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            db.execute("ROLLBACK")
            raise JournalRefusal([str(exc)]) from exc
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._take_new_rows()
        entry = self.state().by_txid(c.txid)
        assert entry is not None
        return entry

    def _insert(self, c: Candidate, request_hash: str, kind: str) -> int:
        """One row; an adopted checkpoint already held is skipped (returns 0)."""
        verb = "INSERT OR IGNORE" if kind == "adopted" else "INSERT"
        cur = self._db.execute(
            f"{verb} INTO signed (txid, epoch, round, payload, input, input_value, "
            "coin_value, dest_epoch, fee, handover, request_hash, created_at, kind) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (c.txid, c.epoch, c.round, c.payload, str(c.input), c.input_value, c.coin_value,
             c.dest_epoch, c.fee, int(c.handover), request_hash, time.time(), kind),
        )
        return cur.rowcount

    @_locked
    def adopt(self, entries: list[Candidate]) -> int:
        """Record checkpoints the quorum made without this appliance (each proven by k
        signatures), so its expected coin follows the chain. Returns how many were new."""
        added = 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for c in entries:
                added += self._insert(c, "", "adopted")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._take_new_rows()
        return added

    @_locked
    def attach_signature(self, txid: str, signed_psbt: str) -> None:
        """Keep the signed PSBT so a repeated request is answered without the device."""
        cur = self._db.execute(
            "UPDATE signed SET signed_psbt = ? WHERE txid = ? AND signed_psbt IS NULL",
            (signed_psbt, txid),
        )
        snap = self._snapshot
        if cur.rowcount and snap is not None:
            self._snapshot = JournalState(
                self.genesis,
                tuple(
                    replace(e, signed_psbt=signed_psbt) if e.txid == txid else e
                    for e in snap.entries
                ),
            )

    @_locked
    def log(
        self,
        decision: str,
        detail: dict[str, Any],
        txid: str | None = None,
        epoch: int | None = None,
        round: int | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO decisions (ts, decision, txid, epoch, round, detail) VALUES (?,?,?,?,?,?)",
            (time.time(), decision, txid, epoch, round, json.dumps(detail, sort_keys=True)),
        )

    @_locked
    def store_records(self, records: Iterable[EpochRecord]) -> None:
        for r in records:
            self._db.execute(
                "INSERT OR IGNORE INTO records (epoch, json) VALUES (?, ?)",
                (r.epoch, json.dumps(r.to_json(), sort_keys=True)),
            )

    @_locked
    def records(self) -> list[EpochRecord]:
        rows = self._db.execute("SELECT json FROM records ORDER BY epoch").fetchall()
        return [EpochRecord.from_json(r[0]) for r in rows]

    @_locked
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @_locked
    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


_COLUMNS = (
    "seq, txid, epoch, round, payload, input, input_value, coin_value, "
    "dest_epoch, fee, handover, signed_psbt, created_at, kind"
)


def _entry(r: tuple) -> SignedEntry:
    return SignedEntry(
        seq=r[0],
        txid=r[1],
        epoch=r[2],
        round=r[3],
        payload=r[4],
        input=Outpoint.parse(r[5]),
        input_value=r[6],
        coin_value=r[7],
        dest_epoch=r[8],
        fee=r[9],
        handover=bool(r[10]),
        signed_psbt=r[11],
        created_at=r[12],
        kind=r[13],
    )
