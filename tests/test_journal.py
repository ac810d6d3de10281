import sqlite3

import pytest

from appliance.journal import (
    Candidate,
    Journal,
    JournalError,
    JournalRefusal,
    signing_conflicts,
)
from bftanchor.template import Coin, Outpoint

GENESIS = Coin(Outpoint("11" * 32, 0), 1_000_000, 0)


def cand(txid, epoch, rnd, payload="aa", inp=GENESIS.outpoint, fee=500, dest_epoch=0):
    return Candidate(
        txid=txid,
        epoch=epoch,
        round=rnd,
        payload=payload,
        input=inp,
        input_value=1_000_000,
        coin_value=1_000_000 - fee,
        dest_epoch=dest_epoch,
        fee=fee,
        handover=dest_epoch != epoch,
    )


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "j.sqlite", GENESIS)
    yield j
    j.close()


def test_first_spend_must_be_genesis(journal):
    reasons = signing_conflicts(journal.state(), cand("t1", 0, 5, inp=Outpoint("22" * 32, 0)))
    assert any("not the expected coin" in r for r in reasons)
    assert signing_conflicts(journal.state(), cand("t1", 0, 5)) == []


def test_chain_of_spends(journal):
    journal.reserve(cand("a1" * 32, 0, 5), "h")
    # The next checkpoint spends output 1 of the last one signed.
    nxt = cand("b2" * 32, 0, 10, payload="bb", inp=Outpoint("a1" * 32, 1))
    assert signing_conflicts(journal.state(), nxt) == []
    journal.reserve(nxt, "h")
    # The genesis is no longer spendable.
    reasons = signing_conflicts(journal.state(), cand("c3" * 32, 0, 15, payload="cc"))
    assert any("not the expected coin" in r for r in reasons)


def test_equivocation_refused_and_one_checkpoint_per_coin(journal):
    journal.reserve(cand("a1" * 32, 0, 5), "h")
    with pytest.raises(JournalRefusal, match="equivocation"):
        journal.reserve(cand("a2" * 32, 0, 5, payload="zz"), "h")
    # A newer QC on the same coin is another checkpoint: never two per outpoint.
    with pytest.raises(JournalRefusal, match="another payload"):
        journal.reserve(cand("b1" * 32, 0, 9, payload="bb"), "h")
    # A ladder level must pay the coin where the others do (no handover sneaked in).
    with pytest.raises(JournalRefusal, match="fee-ladder level must pay"):
        journal.reserve(cand("b2" * 32, 0, 5, dest_epoch=1, fee=900), "h")
    # Rounds only increase along the chain.
    with pytest.raises(JournalRefusal, match="rounds only increase"):
        journal.reserve(cand("c1" * 32, 0, 4, payload="cc", inp=Outpoint("a1" * 32, 1)), "h")


def test_fee_ladder_levels_differ_in_fee_alone(journal):
    journal.reserve(cand("a1" * 32, 0, 5, fee=500), "h")
    journal.reserve(cand("a2" * 32, 0, 5, fee=400), "h")
    journal.reserve(cand("a3" * 32, 0, 5, fee=900), "h")
    state = journal.state()
    # Any level may confirm: every output is a tip, and the input takes more levels.
    assert {Outpoint("a1" * 32, 1), Outpoint("a2" * 32, 1), Outpoint("a3" * 32, 1),
            GENESIS.outpoint} == set(state.spendable())


def insert_past_python(journal: Journal, round: int, input: str) -> None:
    """A signing row for epoch 0 (payload 'other') written straight into SQLite: only the
    schema's triggers stand in its way."""
    journal._db.execute(
        "INSERT INTO signed (txid, epoch, round, payload, input, input_value, coin_value, "
        "dest_epoch, fee, handover, request_hash, created_at) "
        "VALUES ('x', 0, ?, 'other', ?, 1, 1, 0, 1, 0, 'h', 0)",
        (round, input),
    )


def test_sql_trigger_keeps_one_checkpoint_per_coin(journal):
    journal.reserve(cand("a1" * 32, 0, 5), "h")
    with pytest.raises(sqlite3.IntegrityError, match="per-coin"):
        insert_past_python(journal, 9, str(GENESIS.outpoint))


def test_a_proven_spend_overrides_an_unused_attempt(journal):
    """Signed a newer QC the network never used: the quorum's real spend is followed."""
    journal.reserve(cand("a1" * 32, 0, 12, payload="s12"), "h")
    real = cand("b1" * 32, 0, 11, payload="t11")
    nxt = cand("c1" * 32, 0, 12, payload="s12", inp=Outpoint("b1" * 32, 1))
    # Not adopted yet: b1's output is unknown.
    assert any("not the expected coin" in r for r in signing_conflicts(journal.state(), nxt))
    state = journal.state().with_adopted([real])
    assert set(state.spendable()) == {Outpoint("b1" * 32, 1), GENESIS.outpoint}
    assert signing_conflicts(state, nxt) == []
    # Still never a second own checkpoint on the coin it signed once (not even the
    # quorum's ladder level), and the dead attempt's output is no tip.
    assert signing_conflicts(state, cand("b2" * 32, 0, 11, payload="t11", fee=900))
    dead = cand("d1" * 32, 0, 20, payload="x20", inp=Outpoint("a1" * 32, 1))
    assert any("not the expected coin" in r for r in signing_conflicts(state, dead))
    # The adoption is written with the signature, in one transaction.
    journal.reserve(nxt, "h", [real])
    kinds = [(e.txid[:2], e.kind) for e in journal.state().entries]
    assert kinds == [("a1", "signed"), ("b1", "adopted"), ("c1", "signed")]


def test_any_proven_ladder_level_may_be_the_one_mined(journal):
    journal.adopt([cand("a3" * 32, 0, 5, fee=900)])
    mined = cand("a1" * 32, 0, 5, fee=500)
    nxt = cand("c1" * 32, 0, 9, payload="bb", inp=Outpoint("a1" * 32, 1))
    assert any("not the expected coin" in r for r in signing_conflicts(journal.state(), nxt))
    assert signing_conflicts(journal.state().with_adopted([mined]), nxt) == []


def test_identical_request_is_idempotent(journal):
    c = cand("a1" * 32, 0, 5)
    first = journal.reserve(c, "h")
    again = journal.reserve(c, "h")
    assert first.seq == again.seq
    assert journal.head()["signed"] == 1


def test_trigger_refuses_equivocation_even_bypassing_python(journal):
    journal.reserve(cand("a1" * 32, 0, 5), "h")
    with pytest.raises(sqlite3.IntegrityError, match="equivocation"):
        insert_past_python(journal, 5, "i:0")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        journal._db.execute("DELETE FROM signed")


def test_survives_reopen_and_rejects_other_genesis(tmp_path):
    j = Journal(tmp_path / "j.sqlite", GENESIS)
    j.reserve(cand("a1" * 32, 0, 5), "h")
    j.close()
    j2 = Journal(tmp_path / "j.sqlite", GENESIS)
    assert j2.head()["signed"] == 1
    with pytest.raises(JournalRefusal, match="equivocation"):
        j2.reserve(cand("a2" * 32, 0, 5, payload="zz"), "h")
    j2.close()
    with pytest.raises(ValueError, match="belongs to genesis"):
        Journal(tmp_path / "j.sqlite", Coin(Outpoint("33" * 32, 0), 1, 0))


def test_durability_settings(journal):
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_snapshot_follows_writes_by_this_and_other_connections(tmp_path):
    a = Journal(tmp_path / "j.sqlite", GENESIS)
    b = Journal(tmp_path / "j.sqlite", GENESIS)
    assert a.state().entries == () and b.state().entries == ()
    a.reserve(cand("a1" * 32, 0, 5), "h")
    a.attach_signature("a1" * 32, "psbt-bytes")
    # b holds an older snapshot; another connection's commit must invalidate it.
    seen = b.state()
    assert [e.txid for e in seen.entries] == ["a1" * 32]
    assert seen.entries[0].signed_psbt == "psbt-bytes"
    with pytest.raises(JournalRefusal, match="equivocation"):
        b.reserve(cand("a2" * 32, 0, 5, payload="zz"), "h")
    b.adopt([cand("b1" * 32, 0, 9, payload="bb", inp=Outpoint("a1" * 32, 1))])
    assert [e.kind for e in a.state().entries] == ["signed", "adopted"]
    a.close()
    b.close()


def test_fee_levels_per_coin_are_bounded(journal):
    from appliance.journal import MAX_LEVELS_PER_COIN

    for i in range(MAX_LEVELS_PER_COIN):
        journal.reserve(cand(f"{i:064x}", 0, 5, fee=500 + i), "h")
    with pytest.raises(JournalRefusal, match="fee-ladder levels signed, expected at most"):
        journal.reserve(cand("ff" * 32, 0, 5, fee=10_000), "h")


def test_work_done_during_the_commit_is_returned_only_once_the_row_is_durable(tmp_path):
    """reserve_while runs the signer while the reservation's fsync is in flight: what it
    computed comes back only when another connection (a restart) already sees the row."""
    j = Journal(tmp_path / "j.sqlite", GENESIS)
    try:
        c = cand("a1" * 32, 0, 5)
        entry, out = j.reserve_while(c, "h", [], lambda: "signature")
        assert out == "signature" and entry.txid == c.txid
        other = sqlite3.connect(tmp_path / "j.sqlite")
        assert other.execute("SELECT txid FROM signed").fetchall() == [(c.txid,)]
        other.close()
        # Work that fails (a device error) leaves the reservation standing, and the
        # journal's own view of it current: a conflicting payload is still refused.
        def fails() -> str:
            raise RuntimeError("device unplugged")

        nxt = cand("b2" * 32, 0, 10, payload="bb", inp=Outpoint("a1" * 32, 1))
        with pytest.raises(RuntimeError, match="unplugged"):
            j.reserve_while(nxt, "h", [], fails)
        assert j.state().by_txid(nxt.txid) is not None
        with pytest.raises(JournalRefusal):
            j.reserve(cand("b3" * 32, 0, 10, payload="zz", inp=Outpoint("a1" * 32, 1)), "h")
    finally:
        j.close()


class _FailingCommit:
    """The journal's connection, with a COMMIT that fails as a full disk would."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._db, name)


def test_a_failed_commit_drops_what_the_work_computed(tmp_path):
    j = Journal(tmp_path / "j.sqlite", GENESIS)
    real = j._db
    j._db = _FailingCommit(real)
    try:
        computed = []
        with pytest.raises(JournalError, match="disk full"):
            j.reserve_while(cand("a1" * 32, 0, 5), "h", [], lambda: computed.append(1) or "sig")
        assert computed == [1]  # it ran, and its result never left reserve_while
        j._db = real
        assert j.state().by_txid("a1" * 32) is None
        assert real.execute("SELECT COUNT(*) FROM signed").fetchone()[0] == 0
    finally:
        j._db = real
        j.close()


def _chain(journal: Journal, start: int, count: int) -> None:
    """`count` more checkpoints, each spending the last one's coin."""
    inp = GENESIS.outpoint
    state = journal.state()
    if state.entries:
        inp = Outpoint(state.entries[-1].txid, 1)
    for r in range(start, start + count):
        txid = f"{r:064x}"
        journal.reserve(cand(txid, 0, r, payload=f"{r:04x}", inp=inp), "h")
        journal.keep_wal_room()
        inp = Outpoint(txid, 1)


def test_room_reserved_in_the_wal_is_written_over_and_holds_nothing(tmp_path):
    """prepare_to_serve lengthens the WAL by frames no commit holds: the commits that follow
    write over them (the file keeps its size), a copy of the files taken at any moment
    reads back exactly the rows committed, and once the room is used up twice as much is
    reserved."""
    import shutil

    path = tmp_path / "j.sqlite"
    journal = Journal(path, GENESIS)
    wal = tmp_path / "j.sqlite-wal"
    try:
        _chain(journal, 1, 3)
        journal.prepare_to_serve()
        roomy = wal.stat().st_size
        assert roomy > 1_000_000
        assert journal.get_meta("wal room") is None  # rolled back: not a row
        _chain(journal, 4, 10)
        assert wal.stat().st_size == roomy  # written over, not grown
        copy = tmp_path / "copy"
        copy.mkdir()
        for name in ("j.sqlite", "j.sqlite-wal"):
            shutil.copyfile(tmp_path / name, copy / name)
        seen = Journal(copy / "j.sqlite", GENESIS)
        try:
            assert [e.round for e in seen.state().entries] == list(range(1, 14))
            assert seen._db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            seen.close()
        # Use the room up: the next signature after that reserves twice as much.
        assert journal.reserve_wal_room(64 << 10)
        small = wal.stat().st_size
        before = journal._wal_room_end
        n = 13
        while wal.stat().st_size <= before:
            _chain(journal, n + 1, 1)
            n += 1
        assert journal._wal_room == 128 << 10
        grown = wal.stat().st_size
        assert grown > small
        _chain(journal, n + 1, 2)  # within the new room: written over again
        n += 2
        assert wal.stat().st_size == grown
        assert [e.round for e in journal.state().entries] == list(range(1, n + 1))
    finally:
        journal.close()
    reopened = Journal(path, GENESIS)
    try:
        assert len(reopened.state().entries) == n
    finally:
        reopened.close()


def test_no_room_is_reserved_on_a_disk_short_of_space(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    journal = Journal(tmp_path / "j.sqlite", GENESIS)
    try:
        _chain(journal, 1, 2)
        wal = tmp_path / "j.sqlite-wal"
        size = wal.stat().st_size
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, 8 << 20, 2 << 20))
        assert journal.reserve_wal_room(1 << 20) is False
        assert wal.stat().st_size == size
        _chain(journal, 3, 1)  # and signing goes on, the WAL growing as it goes
        assert wal.stat().st_size > size
    finally:
        journal.close()
