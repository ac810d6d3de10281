"""The anti-equivocation journal: what this appliance has signed, in SQLite.

A signature leaves the appliance only after the row that allows it is committed
and fsynced (SQLite's synchronous=FULL, or, while serving, the WAL fsync helper of
appliance/walsync.py), so a crash at any point leaves a journal that still forbids
every conflicting signature. The rules themselves live in
`signing_conflicts`, a pure function the policy uses too; the insert re-checks
them inside one IMMEDIATE transaction, and a trigger refuses two payloads for
one (epoch, round) even if the Python above were wrong.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from appliance.walsync import WalSyncer, WalSyncError
from bftanchor.epoch import EpochRecord
from bftanchor.template import Coin, Outpoint

log = logging.getLogger("bft_anchor.appliance")

SCHEMA = """
-- A payload this appliance signed on a coin and that can never complete there: n - k + 1
-- validators of the coin's epoch signed other payloads on it (evidence: their txids and
-- keys). Written in the transaction of the signature that needed it; append-only.
CREATE TABLE IF NOT EXISTS released (
    input        TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    evidence     TEXT    NOT NULL,
    created_at   REAL    NOT NULL,
    PRIMARY KEY (input, payload)
);
CREATE TRIGGER IF NOT EXISTS released_is_append_only BEFORE DELETE ON released
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS released_is_final BEFORE UPDATE ON released
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
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
-- For one_checkpoint_per_coin_v2: without it every insert read the whole table.
CREATE INDEX IF NOT EXISTS signed_input ON signed(input);
CREATE TRIGGER IF NOT EXISTS no_equivocation BEFORE INSERT ON signed
WHEN NEW.kind = 'signed' AND EXISTS (
    SELECT 1 FROM signed WHERE kind = 'signed'
    AND epoch = NEW.epoch AND round = NEW.round AND payload != NEW.payload)
BEGIN SELECT RAISE(ABORT, 'equivocation: another payload is signed for this epoch and round');
END;
-- The per-coin rule, below the Python: own signatures on one outpoint are fee-ladder
-- levels of one checkpoint (same payload, same destination) or nothing, unless the other
-- payload was released on that outpoint (table released: proven never to complete).
DROP TRIGGER IF EXISTS one_checkpoint_per_coin;
CREATE TRIGGER IF NOT EXISTS one_checkpoint_per_coin_v2 BEFORE INSERT ON signed
WHEN NEW.kind = 'signed' AND EXISTS (
    SELECT 1 FROM signed s WHERE s.kind = 'signed' AND s.input = NEW.input
    AND (s.payload != NEW.payload OR s.dest_epoch != NEW.dest_epoch)
    AND NOT EXISTS (SELECT 1 FROM released r
                    WHERE r.input = s.input AND r.payload = s.payload))
BEGIN SELECT RAISE(ABORT, 'per-coin: another checkpoint is signed on this outpoint');
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
-- Own signatures later seen with k valid signatures of the quorum (adopted rows are
-- proven by construction).
CREATE TABLE IF NOT EXISTS proven (
    txid  TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


# Fee-ladder levels this appliance signs on one coin: a node rebuilds its ladder now and
# then (a new attempt, a new fee estimate), but a flood of one-satoshi steps is junk.
MAX_LEVELS_PER_COIN = 64


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
class Release:
    """Payload `payload` (hex) on coin `input` can never complete: `signers` (keys, hex),
    n - k + 1 or more validators of the coin's epoch, signed the transactions `txids`
    that spend it with other payloads, and each signs one payload per coin."""

    input: Outpoint
    payload: str
    txids: tuple[str, ...]
    signers: tuple[str, ...]

    def evidence(self) -> str:
        return json.dumps({"txids": list(self.txids), "signers": list(self.signers)},
                          sort_keys=True)


@dataclass(frozen=True)
class SignedEntry(Candidate):
    """A journal row: a checkpoint this appliance signed, or one it adopted (proven by
    the quorum's signatures), with what the journal adds to it."""

    seq: int = 0
    signed_psbt: str | None = None
    created_at: float = 0.0
    kind: str = "signed"

    @classmethod
    def of(cls, c: Candidate, **row: Any) -> SignedEntry:
        return cls(**{f.name: getattr(c, f.name) for f in fields(Candidate)}, **row)

    @property
    def coin(self) -> Coin:
        """The coin this checkpoint creates (output 1)."""
        return Coin(Outpoint(self.txid, 1), self.coin_value, self.dest_epoch)


@dataclass(frozen=True)
class _Structure:
    """The coin tree of a journal state: spends per coin, the live ones, the coins
    reachable from the genesis through live spends (with their creators), and the tips
    (reachable coins with no live spend)."""

    spends: dict[Outpoint, tuple[SignedEntry, ...]]
    live: dict[Outpoint, tuple[SignedEntry, ...]]
    coins: dict[Outpoint, Coin]
    creator: dict[Outpoint, SignedEntry]
    tips: frozenset[Outpoint]
    by_txid: dict[str, SignedEntry]
    # Own signatures by (epoch, round): one payload each (the equivocation rule).
    rounds: dict[tuple[int, int], tuple[SignedEntry, ...]]

    @classmethod
    def of(cls, state: JournalState) -> _Structure:
        spends: dict[Outpoint, tuple[SignedEntry, ...]] = {}
        rounds: dict[tuple[int, int], tuple[SignedEntry, ...]] = {}
        for e in state.entries:
            spends[e.input] = spends.get(e.input, ()) + (e,)
            if e.kind == "signed":
                rounds[(e.epoch, e.round)] = rounds.get((e.epoch, e.round), ()) + (e,)
        live: dict[Outpoint, tuple[SignedEntry, ...]] = {}
        for op, es in spends.items():
            es = tuple(e for e in es if not state.is_released(e))
            proven = {(e.payload, e.dest_epoch) for e in es if state.is_proven(e)}
            if proven:
                es = tuple(e for e in es if (e.payload, e.dest_epoch) in proven)
            if es:
                live[op] = es
        coins: dict[Outpoint, Coin] = {state.genesis.outpoint: state.genesis}
        creator: dict[Outpoint, SignedEntry] = {}
        todo = [state.genesis.outpoint]
        while todo:
            op = todo.pop()
            for e in live.get(op, ()):
                c = e.coin
                if c.outpoint not in coins:
                    coins[c.outpoint] = c
                    creator[c.outpoint] = e
                    todo.append(c.outpoint)
        tips = frozenset(op for op in coins if op not in live)
        return cls(spends, live, coins, creator, tips, {e.txid: e for e in state.entries},
                   rounds)

    def replaced(self, old: SignedEntry, new: SignedEntry) -> _Structure:
        """The same tree with one entry's row replaced (its signed PSBT kept)."""
        def swap(es: tuple[SignedEntry, ...]) -> tuple[SignedEntry, ...]:
            return tuple(new if e is old else e for e in es)

        spends, live, creator = dict(self.spends), dict(self.live), dict(self.creator)
        by_txid, rounds = dict(self.by_txid), dict(self.rounds)
        spends[old.input] = swap(spends[old.input])
        if old.input in live:
            live[old.input] = swap(live[old.input])
        out = Outpoint(old.txid, 1)
        if creator.get(out) is old:
            creator[out] = new
        by_txid[old.txid] = new
        if (old.epoch, old.round) in rounds:
            rounds[(old.epoch, old.round)] = swap(rounds[(old.epoch, old.round)])
        return _Structure(spends, live, self.coins, creator, self.tips, by_txid, rounds)

    def grown(self, state: JournalState, rows: tuple[SignedEntry, ...]) -> _Structure | None:
        """The structure of `state` plus own rows `rows`, one row at a time; None (walk
        again) for anything but the plain case: a new own spend that is neither proven nor
        released, of a coin whose output nobody spends yet."""
        spends, live, coins = dict(self.spends), dict(self.live), dict(self.coins)
        creator, tips = dict(self.creator), set(self.tips)
        by_txid, rounds = dict(self.by_txid), dict(self.rounds)
        for e in rows:
            out = Outpoint(e.txid, 1)
            if (e.kind != "signed" or e.txid in state.proven_txids
                    or (e.input, e.payload) in state.released or out in spends
                    or out in coins or e.txid in by_txid):
                return None
            spends[e.input] = spends.get(e.input, ()) + (e,)
            by_txid[e.txid] = e
            rounds[(e.epoch, e.round)] = rounds.get((e.epoch, e.round), ()) + (e,)
            siblings = live.get(e.input, ())
            proven = {(x.payload, x.dest_epoch) for x in siblings if state.is_proven(x)}
            if proven and (e.payload, e.dest_epoch) not in proven:
                continue  # a dead attempt: the quorum's spend of this coin is another
            live[e.input] = siblings + (e,)
            if e.input in coins:
                coins[out] = e.coin
                creator[out] = e
                tips.discard(e.input)
                tips.add(out)
        return _Structure(spends, live, coins, creator, frozenset(tips), by_txid, rounds)


@dataclass(frozen=True)
class JournalState:
    """A snapshot of everything signed or proven, enough to decide the next request purely.

    The checkpoints form a tree rooted at the genesis coin: each entry spends one coin and
    creates the next (its output 1). Under f < n/3 two quorum-signed spends of one coin can
    differ only as fee-ladder levels (same payload, same destination), so a proven spend
    (k valid signatures seen) settles which of this appliance's own attempts on that coin
    are still alive: those with the proven payload. Attempts with another payload were
    never used by the quorum and are dead; the chain is followed through the proven ones.
    """

    genesis: Coin
    entries: tuple[SignedEntry, ...]
    proven_txids: frozenset[str] = frozenset()
    released: frozenset[tuple[Outpoint, str]] = frozenset()
    # The tree and indexes (spends, live spends, reachable coins, tips, txids, own rounds)
    # of the state this one extends, updated per new row instead of built again: a
    # decision then costs the same whatever the journal's length.
    _structure: _Structure | None = field(default=None, compare=False, repr=False)

    @property
    def last(self) -> SignedEntry | None:
        return self.entries[-1] if self.entries else None

    @cached_property
    def signed(self) -> tuple[SignedEntry, ...]:
        return tuple(e for e in self.entries if e.kind == "signed")

    def signed_at(self, epoch: int, round: int) -> tuple[SignedEntry, ...]:
        """This appliance's own signatures for one (epoch, round)."""
        return self._chain.rounds.get((epoch, round), ())

    def is_proven(self, e: SignedEntry) -> bool:
        return e.kind == "adopted" or e.txid in self.proven_txids

    def is_released(self, e: SignedEntry) -> bool:
        """An own spend whose payload is proven never to complete on its coin (and was
        not seen quorum-signed after all)."""
        return (e.input, e.payload) in self.released and not self.is_proven(e)

    @cached_property
    def highest(self) -> tuple[int, int] | None:
        """The highest (epoch, round) signed or adopted (a watermark, not a rule)."""
        if not self.entries:
            return None
        return max((e.epoch, e.round) for e in self.entries)

    @cached_property
    def _chain(self) -> _Structure:
        if self._structure is not None:
            return self._structure
        return _Structure.of(self)

    def spends_of(self, outpoint: Outpoint) -> tuple[SignedEntry, ...]:
        """Every entry, own or proven, that spends this coin."""
        return self._chain.spends.get(outpoint, ())

    def live_spends(self, outpoint: Outpoint) -> tuple[SignedEntry, ...]:
        """The spends of a coin that may still be the one mined: once a proven spend is
        known, only its fee-ladder siblings; otherwise every spend this appliance signed."""
        return self._chain.live.get(outpoint, ())

    def created_by(self, outpoint: Outpoint) -> SignedEntry | None:
        """The checkpoint that created a coin (None for the genesis)."""
        return self._chain.creator.get(outpoint)

    def known_coin(self, outpoint: Outpoint) -> Coin | None:
        """A coin this appliance can name: the genesis or output 1 of any entry."""
        if outpoint == self.genesis.outpoint:
            return self.genesis
        e = self.by_txid(outpoint.txid)
        if e is not None and outpoint.vout == 1:
            return e.coin
        return None

    def spendable(self) -> dict[Outpoint, Coin]:
        """Coins a request may spend. Tips: reachable coins with no live spend (any of
        them may be the real chain's, e.g. the outputs of sibling ladder levels). Parents
        of a tip: only for another fee-ladder level of the spend already there."""
        return dict(self._spendable)

    @cached_property
    def _spendable(self) -> dict[Outpoint, Coin]:
        chain = self._chain
        out = {op: chain.coins[op] for op in chain.tips}
        for op in chain.tips:
            e = chain.creator.get(op)
            if e is not None:
                out[e.input] = chain.coins[e.input]
        return out

    def by_txid(self, txid: str) -> SignedEntry | None:
        return self._chain.by_txid.get(txid)

    def appended(self, rows: Iterable[SignedEntry]) -> JournalState:
        """This state plus own rows just committed, its structure updated row by row."""
        rows = tuple(rows)
        if not rows:
            return self
        chain = self._chain.grown(self, rows)
        return JournalState(self.genesis, self.entries + rows, self.proven_txids,
                            self.released, chain)

    def with_signed_psbt(self, txid: str, signed_psbt: str) -> JournalState:
        """This state with the signed PSBT kept for txid (the same tree)."""
        old = self.by_txid(txid)
        if old is None:
            return self
        new = replace(old, signed_psbt=signed_psbt)
        # The row is nearly always the newest: found from the end, the rest copied as is.
        i = next((i for i in range(len(self.entries) - 1, -1, -1)
                  if self.entries[i].txid == txid), None)
        if i is None:
            return self
        entries = self.entries[:i] + (new,) + self.entries[i + 1:]
        return JournalState(self.genesis, entries, self.proven_txids, self.released,
                            self._chain.replaced(old, new))

    def with_adopted(self, adopted: Iterable[Candidate]) -> JournalState:
        """This state plus proven checkpoints not yet written (what a decision would see)."""
        extra: list[SignedEntry] = []
        proven = set(self.proven_txids)
        for c in adopted:
            if self.by_txid(c.txid) is not None:
                proven.add(c.txid)
                continue
            extra.append(SignedEntry.of(c, kind="adopted"))
        if not extra and proven == self.proven_txids:
            return self
        return JournalState(self.genesis, self.entries + tuple(extra), frozenset(proven),
                            self.released)

    def with_released(self, releases: Iterable[Release]) -> JournalState:
        """This state plus releases not yet written (what a decision would see)."""
        more = self.released | {(r.input, r.payload) for r in releases}
        if more == self.released:
            return self
        return JournalState(self.genesis, self.entries, self.proven_txids, frozenset(more))


def signing_conflicts(state: JournalState, c: Candidate) -> list[str]:
    """Every reason the journal forbids signing c (empty: allowed).

    The rule is per coin: never sign two different checkpoints that spend one outpoint,
    except fee-ladder levels, which carry the same payload to the same destination and
    differ in the fee alone; spend only a coin at the tip of what the quorum signed (as
    far as this appliance can prove it); rounds only increase along the chain. An
    identical transaction already signed is allowed: it is answered from the journal.
    """
    if state.by_txid(c.txid) is not None:
        return []
    reasons: list[str] = []
    coins = state.spendable()
    if c.input not in coins:
        expected = ", ".join(str(o) for o in coins)
        reasons.append(f"input {c.input} is not the expected coin (expected one of: {expected})")
    for e in state.spends_of(c.input):
        if state.is_released(e):
            continue  # proven never to complete: n - k + 1 validators signed other payloads
        if e.payload != c.payload:
            reasons.append(
                f"coin {c.input} already has a checkpoint with another payload (epoch "
                f"{e.epoch} round {e.round}, txid {e.txid}); expected only a fee-ladder level "
                f"of it, found epoch {c.epoch} round {c.round} (a release needs signatures "
                f"by n - k + 1 validators on other payloads, in the lineage)"
            )
            break
        if e.dest_epoch != c.dest_epoch:
            reasons.append(
                f"coin {c.input}: a fee-ladder level must pay the coin where the others do "
                f"(epoch {e.dest_epoch}'s multisig, txid {e.txid}), found epoch "
                f"{c.dest_epoch}'s"
            )
            break
    own = sum(1 for e in state.spends_of(c.input) if e.kind == "signed")
    if own >= MAX_LEVELS_PER_COIN:
        reasons.append(
            f"coin {c.input} already has {own} fee-ladder levels signed, expected at most "
            f"{MAX_LEVELS_PER_COIN} (each costs a signature and a journal row)"
        )
    parent = state.created_by(c.input)
    if parent is not None and (c.epoch, c.round) <= (parent.epoch, parent.round):
        reasons.append(
            f"rounds only increase: the coin was created at epoch {parent.epoch} round "
            f"{parent.round}, found epoch {c.epoch} round {c.round}"
        )
    for e in state.signed_at(c.epoch, c.round):
        if e.payload != c.payload:
            reasons.append(
                f"equivocation: a different payload was already signed for epoch {c.epoch} "
                f"round {c.round} (txid {e.txid})"
            )
            break
    return reasons


F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _locked(method: F) -> F:
    def wrapper(self: Journal, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper  # type: ignore[return-value]


class JournalError(ValueError):
    """The journal file itself is unusable (missing, empty, foreign, corrupt, disk full):
    one line that names the file and what is wrong."""


class JournalFull(JournalError):
    """The disk holding the journal is full: nothing can be signed until space is freed."""


def _db_error(path: Path, exc: sqlite3.Error) -> JournalError:
    text = str(exc)
    if "full" in text.lower():
        return JournalFull(f"journal {path}: disk full ({text}); free space, nothing is "
                           "signed until then")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return JournalError(f"journal {path} is corrupt or not a journal ({text}); restore it "
                            "from a backup or an export (docs/operations.md)")
    return JournalError(f"journal {path}: {text}")


# Below this much free space where the journal lives, the appliance does not start.
MIN_FREE_BYTES = 1 << 20
# Room reserved ahead in the WAL while serving (reserve_wal_room): a first 1 MiB (some 35
# signatures), then twice the last each time it is used up, up to 16 MiB.
WAL_ROOM_FIRST = 1 << 20
WAL_ROOM_MAX = 16 << 20


def new_journal_id() -> str:
    return secrets.token_hex(16)


class Journal:
    def __init__(self, path: Path | str, genesis: Coin, journal_id: str | None = None) -> None:
        """Open the journal. With `journal_id` (what `appliance init` bound into the
        config) the file must exist and carry that identity: a missing, empty, foreign or
        corrupt journal is refused, never silently recreated (a fresh journal would let
        the appliance sign again what it signed before)."""
        self.path = Path(path)
        self._commit_thread: ThreadPoolExecutor | None = None
        # While serving: the helper process that fsyncs reservations (prepare_to_serve).
        self._syncer: WalSyncer | None = None
        # Set when an fsync of the WAL failed: nothing is reserved until the journal is
        # reopened (what that fsync was to write may never reach the disk).
        self._broken: str | None = None
        self._wal_path = f"{self.path}-wal"
        self._wal_room = 0
        self._wal_room_end: int | None = None  # the WAL's size once room was reserved
        self.genesis = genesis
        # One connection shared by the appliance's threads; this lock serialises it.
        self.lock = threading.RLock()
        self._snapshot: JournalState | None = None
        self._version = -1
        # The held records, parsed once: the same objects every decision, so their
        # multisigs (keys derived per validator) are derived once too.
        self._records: list[EpochRecord] | None = None
        if journal_id is not None:
            if not self.path.exists():
                raise JournalError(
                    f"journal {self.path} is missing; this appliance was initialized with "
                    f"journal {journal_id}: restore that file, or import an export of it "
                    "(`bft-anchor appliance journal import`)"
                )
            if self.path.stat().st_size == 0:
                raise JournalError(f"journal {self.path} is empty; this appliance was "
                                   f"initialized with journal {journal_id}: restore it")
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = None
        if free is not None and free < MIN_FREE_BYTES:
            # Refuse at start rather than fail at the first signature: nothing could be
            # journaled, so nothing could be signed.
            raise JournalFull(f"journal {self.path}: disk full ({free} bytes free, at least "
                              f"{MIN_FREE_BYTES} needed); free space, nothing is signed "
                              "until then")
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, timeout=30, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc
        try:
            self._open(journal_id)
        except sqlite3.Error as exc:
            self._db.close()
            raise _db_error(self.path, exc) from exc
        except JournalError:
            self._db.close()
            raise

    def _open(self, journal_id: str | None) -> None:
        if journal_id is not None:
            try:
                row = self._db.execute(
                    "SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                row = None
            if row is None:
                raise JournalError(f"journal {self.path} has no identity: it is not the "
                                   f"journal {journal_id} this appliance was initialized with")
            if row[0] != journal_id:
                raise JournalError(f"journal {self.path} is journal {row[0]}, another "
                                   f"appliance's: this one was initialized with {journal_id}")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise JournalError(f"journal {self.path} is corrupt ({check}); restore it "
                                   "from a backup or an export")
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
        # SQLite itself when the last connection closes. It grows about 30 KB per signature
        # in between, into room reserved ahead while serving (reserve_wal_room).
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        stored = self.get_meta("genesis")
        g = self.genesis
        mine = json.dumps({"outpoint": str(g.outpoint), "value": g.value, "epoch": g.epoch})
        if stored is None:
            self.set_meta("genesis", mine)
        elif json.loads(stored)["outpoint"] != str(self.genesis.outpoint):
            raise JournalError(
                f"journal {self.path} belongs to genesis {json.loads(stored)['outpoint']}, "
                f"not {self.genesis.outpoint}"
            )

    @classmethod
    def create(cls, path: Path | str) -> str:
        """`appliance init`: a journal with a new identity, or the identity of the journal
        already there (never overwritten). Returns the journal id to bind in the config."""
        path = Path(path)
        try:
            db = sqlite3.connect(str(path), isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(SCHEMA)
                row = db.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
                if row is not None:
                    return str(row[0])
                jid = new_journal_id()
                db.execute("INSERT INTO meta (key, value) VALUES ('journal_id', ?)", (jid,))
                return jid
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise _db_error(path, exc) from exc

    @_locked
    def close(self) -> None:
        if self._syncer is not None:
            self._syncer.close()
            self._syncer = None
        if self._commit_thread is not None:
            self._commit_thread.shutdown()
            self._commit_thread = None
        self._db.close()

    @_locked
    def wal_checkpoint(self) -> tuple[int, int, int]:
        """Fold the WAL into journal.sqlite and truncate it (see wal_autocheckpoint above).

        For a quiet moment: the serving appliance calls it at start, before it answers.
        Returns SQLite's (busy, wal frames, frames checkpointed).
        """
        try:
            row = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc
        return int(row[0]), int(row[1]), int(row[2])

    @_locked
    def prepare_to_serve(self) -> None:
        """What `appliance serve` does before it answers anything: fold the last run's WAL
        back (wal_checkpoint), reserve room in the new one (reserve_wal_room) and start
        the helper that fsyncs reservations (appliance/walsync.py)."""
        self.wal_checkpoint()
        self.reserve_wal_room(WAL_ROOM_FIRST)
        if self._syncer is None:
            try:
                self._syncer = WalSyncer(self._wal_path)
            except Exception as exc:  # SQLite's own fsync is the fallback
                log.warning("journal %s: no WAL fsync helper (%s); reservations are "
                            "fsynced by SQLite", self.path, exc)

    def helper_ready(self, timeout: float = 0.0) -> bool:
        """Whether the WAL fsync helper has started (waiting at most `timeout` s for it)."""
        return self._syncer is not None and self._syncer.ready(timeout)

    @_locked
    def reserve_wal_room(self, size: int) -> bool:
        """Put about `size` bytes of frames that no commit holds after the last commit in the
        WAL (lengthening it as needed), so the commits that follow write over blocks
        already on disk: an fsync that must also record a longer file costs more than one
        that need not (bench: journal_throughput), and every signature waits for one.

        The room is the frames of a transaction that SQLite spilled to the WAL (a small
        page cache) and that is then rolled back: frames past the last commit, which
        SQLite never reads and overwrites from the next commit on, as after any rolled
        back transaction. So the WAL holds exactly the commits it held, and is still only
        appended to (a copy taken at any moment stays consistent, see _open). The room is
        then fsynced here, not by the next signature's commit. Returns False, changing
        nothing, when the disk has too little space to spare."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return False
        if free < 4 * size + MIN_FREE_BYTES:
            return False
        db = self._db
        try:
            pages = db.execute("PRAGMA cache_size").fetchone()[0]
            db.execute("PRAGMA cache_size=16")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("INSERT INTO meta (key, value) VALUES ('wal room', zeroblob(?))",
                               (size,))
                finally:
                    self._rollback()
            finally:
                db.execute(f"PRAGMA cache_size={int(pages)}")
            fd = os.open(self._wal_path, os.O_RDONLY)
            try:
                os.fsync(fd)
                self._wal_room_end = os.fstat(fd).st_size
            finally:
                os.close(fd)
        except (sqlite3.Error, OSError) as exc:
            log.warning("journal %s: no room reserved in the WAL (%s); commits grow it as "
                        "they go", self.path, exc)
            return False
        self._wal_room = size
        return True

    def keep_wal_room(self) -> None:
        """After a signature: once the commits have used up the room, reserve twice as much
        (up to WAL_ROOM_MAX). Nothing unless prepare_to_serve reserved room."""
        if self._wal_room_end is None:
            return
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        if size > self._wal_room_end:
            self.reserve_wal_room(min(2 * self._wal_room, WAL_ROOM_MAX))

    # --- reading -------------------------------------------------------------

    @_locked
    def state(self) -> JournalState:
        """Everything signed. Read in full only when another connection has committed
        since (SQLite's data_version says so); this connection's own writes update the
        snapshot as they commit, so a decision does not re-read the whole journal."""
        self._forget_if_changed()
        if self._snapshot is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM signed ORDER BY seq").fetchall()
            proven = frozenset(r[0] for r in self._db.execute("SELECT txid FROM proven"))
            released = frozenset(
                (Outpoint.parse(i), p)
                for i, p in self._db.execute("SELECT input, payload FROM released")
            )
            self._snapshot = JournalState(
                self.genesis, tuple(_entry(r) for r in rows), proven, released
            )
        return self._snapshot

    def _forget_if_changed(self) -> None:
        """Drop the cached state and records if another connection has committed since
        they were read (SQLite's data_version; this connection's own commits keep it, and
        they update or drop the caches themselves)."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._snapshot = self._records = None
            self._version = version

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
            self._snapshot = self._snapshot.appended(_entry(r) for r in rows)

    @_locked
    def released_rows(self) -> list[dict[str, Any]]:
        """Every release, as exported: input, payload, evidence (txids, signers)."""
        rows = self._db.execute(
            "SELECT input, payload, evidence FROM released ORDER BY rowid").fetchall()
        return [{"input": i, "payload": p, "evidence": json.loads(e)} for i, p, e in rows]

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
    def reserve(
        self,
        c: Candidate,
        request_hash: str,
        adopted: Iterable[Candidate] = (),
        releases: Iterable[Release] = (),
    ) -> SignedEntry:
        """Commit the intent to sign c durably, or raise JournalRefusal.

        `adopted`: proven checkpoints the decision relied on, written in the same
        transaction (never before a decision to sign). Returns the existing entry when
        the same transaction was signed before.
        """
        return self.reserve_while(c, request_hash, adopted, lambda: None, releases)[0]

    @_locked
    def reserve_while(
        self,
        c: Candidate,
        request_hash: str,
        adopted: Iterable[Candidate],
        work: Callable[[], T],
        releases: Iterable[Release] = (),
    ) -> tuple[SignedEntry, T]:
        """reserve(), running `work` (the signer computing the signature) while the
        commit's fsync is in flight: the fsync is the decision's largest single cost and
        needs no CPU. `work`'s result is handed back only once the reservation is
        durable; if the commit fails it is dropped and the error raised, as if nothing
        had been computed. `work` must not touch the journal. An exception from `work`
        is raised after the commit, which stands (the safe side of a failed signer).

        While serving, the commit is written without SQLite's fsync and the WAL fsync
        helper makes it durable instead, for every reservation, even one that adds no row:
        an earlier one whose fsync could not be confirmed is durable once this one is."""
        if self._broken is not None:
            raise JournalError(self._broken)
        db = self._db
        adopted = list(adopted)
        syncer = self._syncer if self._syncer is not None and self._syncer.ready() else None
        try:
            if syncer is not None:
                db.execute("PRAGMA synchronous=NORMAL")  # the helper fsyncs instead
            return self._reserve_while(c, request_hash, adopted, work, releases, syncer)
        finally:
            if syncer is not None:
                try:
                    db.execute("PRAGMA synchronous=FULL")
                except sqlite3.Error as exc:  # pragma: no cover - the next commit says why
                    log.error("journal %s: %s", self.path, exc)

    def _reserve_while(
        self,
        c: Candidate,
        request_hash: str,
        adopted: list[Candidate],
        work: Callable[[], T],
        releases: Iterable[Release],
        syncer: WalSyncer | None,
    ) -> tuple[SignedEntry, T]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            state = self.state()
            existing = state.by_txid(c.txid)
            if existing is None:
                seen = state.with_adopted(adopted)
                # Only releases this signature needs: those of own spends of its coin.
                needed = [
                    r for r in releases
                    if r.input == c.input and r.payload != c.payload
                    and (r.input, r.payload) not in seen.released
                    and any(e.payload == r.payload for e in seen.spends_of(c.input))
                ]
                reasons = signing_conflicts(seen.with_released(needed), c)
                if reasons:
                    raise JournalRefusal(reasons)
                if self._write_adopted(adopted):
                    self._snapshot = None
                for r in needed:  # in the transaction of the signature they allow
                    db.execute(
                        "INSERT INTO released (input, payload, evidence, created_at) "
                        "VALUES (?, ?, ?, ?)",
                        (str(r.input), r.payload, r.evidence(), time.time()),
                    )
                    self._snapshot = None
                self._insert(c, request_hash, "signed")
            if syncer is not None:
                db.execute("COMMIT")  # in the WAL; durable once the helper says so
                result = self._while_synced(syncer, work)
            else:
                committing = self._committer().submit(db.execute, "COMMIT")
                try:
                    result = work()
                finally:
                    committing.result()  # durable (or raising) before anything is returned
        except sqlite3.IntegrityError as exc:
            self._rollback()
            raise JournalRefusal([str(exc)]) from exc
        except sqlite3.Error as exc:
            self._rollback()
            raise _db_error(self.path, exc) from exc
        except BaseException:
            self._rollback()
            self._snapshot = None  # `work` failed after the commit: read the row back
            raise
        if existing is not None:
            return existing, result
        self._take_new_rows()
        entry = self.state().by_txid(c.txid)
        assert entry is not None
        return entry, result

    def _while_synced(self, syncer: WalSyncer, work: Callable[[], T]) -> T:
        """work(), while the helper fsyncs the WAL; its result only once that is done."""
        try:
            number = syncer.request()
        except WalSyncError as exc:
            raise self._sync_failed(syncer, exc) from exc
        try:
            result = work()
        finally:
            try:
                syncer.wait(number)
            except WalSyncError as exc:
                raise self._sync_failed(syncer, exc) from exc
        return result

    def _sync_failed(self, syncer: WalSyncer, exc: WalSyncError) -> JournalError:
        """The helper could not confirm an fsync: this request is refused. If its fsync
        failed, the journal stays refused until reopened; if the helper is gone, the WAL
        is fsynced here and SQLite fsyncs from now on."""
        self._syncer = None
        syncer.close()
        if not exc.failed:
            try:
                fd = os.open(self._wal_path, os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            except OSError as again:
                exc = WalSyncError(f"{exc}; fsync of {self._wal_path} here failed too "
                                   f"({again.strerror})", failed=True)
        if exc.failed:
            self._broken = (f"journal {self.path}: {exc}; nothing is signed until the "
                            "appliance is restarted (it reopens the journal as it is on disk)")
            log.error("%s", self._broken)
            return JournalError(self._broken)
        log.error("journal %s: %s; fsynced here, and by SQLite from now on", self.path, exc)
        return JournalError(f"journal {self.path}: {exc}; this request is refused, the "
                            "next ones are fsynced without the helper")

    def _committer(self) -> ThreadPoolExecutor:
        """One thread that runs a reservation's COMMIT (sqlite3 releases the GIL in it)."""
        if self._commit_thread is None:
            self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix="journal-commit")
        return self._commit_thread

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
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            added = self._write_adopted(entries)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise _db_error(self.path, exc) from exc
        except BaseException:
            self._rollback()
            raise
        self._snapshot = None
        return added

    @_locked
    def import_rows(
        self,
        rows: list[tuple[Candidate, str, bool]],
        records: list[EpochRecord],
        watermark: tuple[int, int] | None,
        released: Iterable[tuple[str, str, str]] = (),
    ) -> int:
        """Merge another journal's rows (appliance/interchange.py) in one transaction.

        Own signatures keep kind 'signed', so the triggers refuse a history that
        conflicts with this one; rows already held are skipped; the watermark only rises.
        """
        db = self._db
        added = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for op, payload, evidence in released:
                db.execute("INSERT OR IGNORE INTO released (input, payload, evidence, "
                           "created_at) VALUES (?, ?, ?, ?)", (op, payload, evidence,
                                                               time.time()))
            for c, kind, proven in rows:
                if self._db.execute("SELECT 1 FROM signed WHERE txid = ?",
                                    (c.txid,)).fetchone() is None:
                    added += self._insert(c, "imported", kind)
                if proven:
                    db.execute("INSERT OR IGNORE INTO proven (txid) VALUES (?)", (c.txid,))
            for r in records:
                db.execute("INSERT OR IGNORE INTO records (epoch, json) VALUES (?, ?)",
                           (r.epoch, json.dumps(r.to_json(), sort_keys=True)))
            old = db.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
            marks = [tuple(json.loads(old[0]))] if old else []
            marks += [watermark] if watermark else []
            marks += [(c.epoch, c.round) for c, kind, _ in rows if kind == "signed"]
            if marks:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('watermark', ?)",
                           (json.dumps(list(max(marks))),))
            db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback()
            raise JournalRefusal([str(exc)]) from exc
        except BaseException:
            self._rollback()
            raise
        self._snapshot = None
        self._records = None
        return added

    def _rollback(self) -> None:
        """Roll back if a transaction is still open: SQLite itself ends it on some errors
        (a full disk), and a ROLLBACK then would hide the real cause behind "cannot
        rollback"."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _write_adopted(self, entries: Iterable[Candidate]) -> int:
        """Inside a transaction: adopted rows, and own rows now proven."""
        added = 0
        for c in entries:
            if self._insert(c, "", "adopted") == 0:
                self._db.execute("INSERT OR IGNORE INTO proven (txid) VALUES (?)", (c.txid,))
            else:
                added += 1
        return added

    @_locked
    def record_signature(
        self, txid: str, signed_psbt: str, detail: dict[str, Any], epoch: int, round: int
    ) -> None:
        """The signed PSBT and the "signed" decision, in one transaction without an fsync
        of its own: what forbids a conflicting signature is the reservation, already
        durable (reserve); this row only spares the device a repeated request, and a
        process crash keeps it (only a power cut before the next fsync could lose it, and
        the same transaction is then signed again, RFC 6979 giving the same bytes)."""
        db = self._db
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                self.attach_signature(txid, signed_psbt)
                self.log("signed", detail, txid, epoch, round)
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                self._snapshot = None  # attach_signature updated it: read it again
                raise
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc
        finally:
            db.execute("PRAGMA synchronous=FULL")

    @_locked
    def attach_signature(self, txid: str, signed_psbt: str) -> None:
        """Keep the signed PSBT so a repeated request is answered without the device."""
        try:
            cur = self._db.execute(
                "UPDATE signed SET signed_psbt = ? WHERE txid = ? AND signed_psbt IS NULL",
                (signed_psbt, txid),
            )
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc
        snap = self._snapshot
        if cur.rowcount and snap is not None:
            self._snapshot = snap.with_signed_psbt(txid, signed_psbt)

    @_locked
    def log(
        self,
        decision: str,
        detail: dict[str, Any],
        txid: str | None = None,
        epoch: int | None = None,
        round: int | None = None,
    ) -> None:
        try:
            self._db.execute(
                "INSERT INTO decisions (ts, decision, txid, epoch, round, detail) "
                "VALUES (?,?,?,?,?,?)",
                (time.time(), decision, txid, _column_int(epoch), _column_int(round),
                 json.dumps(detail, sort_keys=True)),
            )
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc

    @_locked
    def store_records(self, records: Iterable[EpochRecord]) -> None:
        """Hold each record whose epoch has none yet (the first one held stays)."""
        try:
            held = {e for (e,) in self._db.execute("SELECT epoch FROM records")}
            for r in records:
                if r.epoch in held:
                    continue  # INSERT OR IGNORE would ignore it: skip serialising it
                held.add(r.epoch)
                self._db.execute(
                    "INSERT OR IGNORE INTO records (epoch, json) VALUES (?, ?)",
                    (r.epoch, json.dumps(r.to_json(), sort_keys=True)),
                )
                self._records = None
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc

    @_locked
    def records(self) -> list[EpochRecord]:
        """Every record held, by epoch. Read again only when another connection has
        committed since, or this one stored a record."""
        self._forget_if_changed()
        if self._records is None:
            rows = self._db.execute("SELECT json FROM records ORDER BY epoch").fetchall()
            self._records = [EpochRecord.from_json(r[0]) for r in rows]
        return list(self._records)

    @_locked
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @_locked
    def set_meta(self, key: str, value: str) -> None:
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc


def _column_int(value: Any) -> int | None:
    """An (epoch, round) index column: a u64 from a request may not fit SQLite's signed
    64-bit INTEGER (2**64 - 1 raised OverflowError out of the refusal that named it);
    the decision's detail keeps the value as given."""
    if isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < 1 << 63:
        return value
    return None


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
