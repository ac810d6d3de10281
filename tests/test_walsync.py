"""The WAL fsync helper of a serving journal: a signature leaves only after the helper
confirmed the fsync of its reservation, and a helper that fails or is gone costs one
refused request, never an unconfirmed signature."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from anchorharness.fleet import BenchFleet
from appliance import walsync
from appliance.journal import Journal, JournalError
from appliance.walsync import WalSyncer, WalSyncError
from tests.test_journal import GENESIS, cand


@pytest.fixture
def served(tmp_path):
    j = Journal(tmp_path / "j.sqlite", GENESIS)
    j.prepare_to_serve()
    assert j.helper_ready(10.0)  # until it has started, SQLite fsyncs (tested below)
    yield j
    j.close()


def _helper_fds(pid: int) -> set[str]:
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def test_a_serving_journal_has_a_helper_holding_its_wal(served):
    syncer = served._syncer
    assert syncer is not None
    syncer.wait(syncer.request())  # in its loop
    assert str(served.path) + "-wal" in _helper_fds(syncer.pid)
    served.close()
    with pytest.raises(ProcessLookupError):  # reaped: close() waited for it
        os.kill(syncer.pid, 0)


def test_the_work_is_handed_back_only_once_the_helper_answered(served):
    """With the helper stopped, the reservation and the work are done but nothing comes
    back; it comes back once the helper has fsynced. Skipping the wait fails this."""
    pid = served._syncer.pid
    done: list[object] = []
    worked = threading.Event()

    def work() -> str:
        worked.set()
        return "signature"

    os.kill(pid, signal.SIGSTOP)
    try:
        t = threading.Thread(target=lambda: done.append(
            served.reserve_while(cand("a1" * 32, 0, 5), "h", [], work)[1]))
        t.start()
        assert worked.wait(10)
        t.join(0.5)
        assert t.is_alive() and done == []
    finally:
        os.kill(pid, signal.SIGCONT)
    t.join(10)
    assert done == ["signature"]


def test_a_helper_that_is_gone_costs_one_request_then_sqlite_fsyncs(served):
    served._syncer._proc.kill()
    served._syncer._proc.wait()
    with pytest.raises(JournalError, match="fsync helper .*this request is refused"):
        served.reserve_while(cand("a1" * 32, 0, 5), "h", [], lambda: "sig")
    assert served._syncer is None
    # The row it committed stands (it was fsynced here), and the same transaction is
    # answered by the next request, with SQLite's own fsync.
    assert served.state().by_txid("a1" * 32) is not None
    entry, out = served.reserve_while(cand("a1" * 32, 0, 5), "h", [], lambda: "sig")
    assert out == "sig" and entry.txid == "a1" * 32


def test_a_failed_fsync_refuses_everything_until_the_journal_is_reopened(served, tmp_path):
    fifo = tmp_path / "not-a-file"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDWR)  # so the helper's open does not block
    try:
        served._syncer.close()
        served._syncer = WalSyncer(str(fifo))  # fdatasync on a FIFO fails: EINVAL
        assert served.helper_ready(10.0)
        with pytest.raises(JournalError, match="EINVAL.*until the appliance is restarted"):
            served.reserve_while(cand("a1" * 32, 0, 5), "h", [], lambda: "sig")
        with pytest.raises(JournalError, match="until the appliance is restarted"):
            served.reserve_while(cand("b1" * 32, 0, 6, payload="bb",
                                      inp=GENESIS.outpoint), "h", [], lambda: "sig")
    finally:
        os.close(keep)
    path = served.path
    served.close()
    again = Journal(path, GENESIS)
    try:
        again.prepare_to_serve()
        assert again.reserve_while(cand("a1" * 32, 0, 5), "h", [], lambda: "s")[1] == "s"
    finally:
        again.close()


def test_an_answer_to_another_request_is_not_taken_for_this_one(tmp_path):
    wal = tmp_path / "wal"
    wal.write_bytes(b"x")
    syncer = WalSyncer(str(wal))
    try:
        first = syncer.request()
        second = syncer.request()
        with pytest.raises(WalSyncError, match=f"answered request {first}, expected {second}"):
            syncer.wait(second)
    finally:
        syncer.close()


def test_the_appliance_refuses_in_one_line_and_signs_the_retry(tmp_path):
    fleet = BenchFleet(4, tag="walsync")
    fleet.fake_genesis()
    app = fleet.appliance("v0", tmp_path / "j.sqlite")
    app.journal.prepare_to_serve()
    assert app.journal.helper_ready(10.0)
    try:
        p, request = fleet.next_request()
        app.journal._syncer._proc.kill()
        app.journal._syncer._proc.wait()
        out = app.handle_sign(*request)
        assert not out.signed
        assert len(out.reasons) == 1 and "\n" not in out.reasons[0]
        assert out.reasons[0].startswith("journal unusable: ")
        again = app.handle_sign(*request)
        assert again.signed and not again.from_journal
    finally:
        app.journal.close()


def test_until_the_helper_has_started_sqlite_fsyncs_and_nothing_waits_for_it(
        tmp_path, monkeypatch):
    """A request right after start is not held up by a helper slow to start: the
    reservation is committed with SQLite's own fsync (FULL) meanwhile."""
    monkeypatch.setattr(walsync, "HELPER", "import time; time.sleep(60)\n" + walsync.HELPER)
    j = Journal(tmp_path / "j.sqlite", GENESIS)
    try:
        j.prepare_to_serve()
        assert j._syncer is not None and not j.helper_ready(0.2)
        t0 = time.monotonic()
        _, out = j.reserve_while(cand("a1" * 32, 0, 5), "h", [], lambda: "s")
        assert out == "s" and time.monotonic() - t0 < 5
        assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert j.state().by_txid("a1" * 32) is not None
    finally:
        j._syncer._proc.kill()
        j.close()
