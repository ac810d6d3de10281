"""The journal state's coin tree is updated row by row after each signature instead of
walked again (a decision then costs the same whatever the journal's length). Whatever
the history, the updated tree must be exactly the one a full walk finds: otherwise the
appliance would allow a coin the journal forbids, or refuse the one it expects."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.journal import Candidate, Journal, JournalState, SignedEntry
from bftanchor.template import Coin, Outpoint

GENESIS = Coin(Outpoint("11" * 32, 0), 1_000_000, 0)


def entry(seq: int, input: Outpoint, payload: str, dest: int, kind: str = "signed") -> SignedEntry:
    txid = hashlib.sha256(f"{seq}".encode()).hexdigest()
    return SignedEntry(txid, 0, seq, payload, input, 1_000_000, 999_000, dest, 1_000,
                       dest != 0, seq=seq, kind=kind)


def same_tree(a: JournalState, b: JournalState) -> None:
    assert a.spendable() == b.spendable()
    ops = {a.genesis.outpoint} | {e.input for e in b.entries} | {
        Outpoint(e.txid, 1) for e in b.entries}
    for op in ops:
        assert a.live_spends(op) == b.live_spends(op), op
        assert a.spends_of(op) == b.spends_of(op), op
        assert a.created_by(op) == b.created_by(op), op
    for e in b.entries:
        assert a.by_txid(e.txid) == b.by_txid(e.txid)
        assert a.signed_at(e.epoch, e.round) == b.signed_at(e.epoch, e.round)


# One step: spend a known outpoint (the genesis, an entry's output 1, or one nobody
# knows) with one of few payloads and destinations; or prove an entry, release a
# payload on a coin, adopt a spend, or keep a signed PSBT.
step = st.tuples(
    st.sampled_from(["spend", "spend", "spend", "prove", "release", "adopt", "psbt"]),
    st.integers(min_value=0, max_value=1_000),
    st.sampled_from(["aa", "bb", "cc"]),
    st.sampled_from([0, 0, 1]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_the_updated_tree_is_the_walked_one(steps):
    state = JournalState(GENESIS, ())
    for seq, (op, pick, payload, dest) in enumerate(steps, start=1):
        outs = [GENESIS.outpoint] + [Outpoint(e.txid, 1) for e in state.entries]
        if op in ("spend", "adopt"):
            inputs = outs + [Outpoint("ee" * 32, 0)]
            e = entry(seq, inputs[pick % len(inputs)], payload, dest)
            if op == "spend":
                state = state.appended([e])
            else:
                c = Candidate(e.txid, e.epoch, e.round, e.payload, e.input, e.input_value,
                              e.coin_value, e.dest_epoch, e.fee, e.handover)
                state = state.with_adopted([c])
        elif op == "prove" and state.entries:
            txid = state.entries[pick % len(state.entries)].txid
            state = JournalState(state.genesis, state.entries, state.proven_txids | {txid},
                                 state.released)
        elif op == "release":
            state = JournalState(state.genesis, state.entries, state.proven_txids,
                                 state.released | {(outs[pick % len(outs)], payload)})
        elif op == "psbt" and state.entries:
            state = state.with_signed_psbt(state.entries[pick % len(state.entries)].txid, "p")
        walked = JournalState(state.genesis, state.entries, state.proven_txids, state.released)
        same_tree(state, walked)


def test_a_journal_read_again_has_the_tree_its_writes_built(tmp_path):
    """Through SQLite: the snapshot the appliance keeps after its own commits (a ladder
    level, a chain of checkpoints) equals the state read from the file."""
    j = Journal(tmp_path / "j.sqlite", GENESIS)
    inp = GENESIS.outpoint
    for r in range(1, 8):
        for fee in (500, 900):  # two fee-ladder levels of each checkpoint
            txid = hashlib.sha256(f"{r}/{fee}".encode()).hexdigest()
            j.reserve(Candidate(txid, 0, r, f"{r:02x}", inp, 1_000_000, 1_000_000 - fee, 0,
                                fee, False), "h")
            j.attach_signature(txid, f"psbt {txid}")
        inp = Outpoint(txid, 1)
    kept = j.state()
    assert kept._structure is not None  # built row by row, not walked
    j.close()
    again = Journal(tmp_path / "j.sqlite", GENESIS)
    try:
        read = again.state()
        assert read == kept
        same_tree(kept, read)
        # The last level's coin and its sibling's are tips; the coin they spend may get
        # another level.
        spendable = set(kept.spendable())
        assert {inp, Outpoint(kept.entries[-2].txid, 1), kept.entries[-1].input} <= spendable
        assert kept.by_txid(kept.entries[-1].txid).signed_psbt.startswith("psbt ")
    finally:
        again.close()
