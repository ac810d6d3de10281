"""An appliance that missed checkpoints catches up only on quorum-signed proof."""

from __future__ import annotations

import pytest
from embit.transaction import Transaction
from helpers import SCRIPT_IDS, SCRIPT_PAIRS, Fleet

QUORUM = ["v0", "v1", "v2"]


@pytest.fixture(params=SCRIPT_PAIRS, ids=SCRIPT_IDS)
def fleet(regtest, tmp_path, request):
    """Every test runs on wsh epochs and again on tapscript epochs."""
    return Fleet(regtest, tmp_path, tag=request.node.name, scripts=request.param)


def raw(regtest, txid: str) -> str:
    return regtest.rpc.getrawtransaction(txid)


def test_missed_checkpoints_are_adopted_from_proof(fleet, regtest):
    t1 = fleet.checkpoint(fleet.qc(5), only=QUORUM)
    t2 = fleet.checkpoint(fleet.qc(10), only=QUORUM)
    v3 = fleet.appliances["v3"]
    qc = fleet.qc(15)
    proposal = fleet.propose(qc)
    stale = v3.handle_sign(*fleet.request(proposal.psbt, qc))
    assert not stale.signed and "not the expected coin" in " ".join(stale.reasons)

    lineage = [raw(regtest, t2), raw(regtest, t1)]  # any order
    # Deciding (what the console shows before approval) writes nothing, adoption included.
    verdict, _, _ = v3.decide(*fleet.request(proposal.psbt, qc), lineage)
    assert verdict.ok and [c.txid for c in verdict.adopted] == [t1, t2]
    assert v3.journal.state().entries == ()
    out = v3.handle_sign(*fleet.request(proposal.psbt, qc), lineage)
    assert out.signed, out.reasons
    kinds = [(e.txid, e.kind) for e in v3.journal.state().entries]
    assert kinds[:2] == [(t1, "adopted"), (t2, "adopted")] and kinds[2][1] == "signed"


def test_lineage_with_too_few_signatures_is_refused(fleet, regtest):
    t1 = fleet.checkpoint(fleet.qc(5), only=QUORUM)
    tx = Transaction.from_string(raw(regtest, t1))
    items = list(tx.vin[0].witness.items)
    if fleet.records[0].is_taproot:  # empty one signature's slot: the leaf still parses
        items[next(i for i, s in enumerate(items[:-2]) if s)] = b""
        tx.vin[0].witness.items = items
    else:
        tx.vin[0].witness.items = [items[0], *items[1:-2], items[-1]]  # drop one signature
    v3 = fleet.appliances["v3"]
    qc = fleet.qc(10)
    out = v3.handle_sign(*fleet.request(fleet.propose(qc).psbt, qc), [tx.serialize().hex()])
    assert not out.signed
    assert "2 valid signature(s)" in " ".join(out.reasons)
    assert v3.journal.state().entries == ()


def test_lineage_that_skips_a_link_is_refused(fleet, regtest):
    fleet.checkpoint(fleet.qc(5), only=QUORUM)
    t2 = fleet.checkpoint(fleet.qc(10), only=QUORUM)
    v3 = fleet.appliances["v3"]
    qc = fleet.qc(15)
    out = v3.handle_sign(*fleet.request(fleet.propose(qc).psbt, qc), [raw(regtest, t2)])
    assert not out.signed
    assert "connect to no coin this appliance knows" in " ".join(out.reasons)
    assert v3.journal.state().entries == ()


def test_older_history_before_the_known_coin_is_skipped(fleet, regtest):
    t1 = fleet.checkpoint(fleet.qc(5))  # everyone signs
    t2 = fleet.checkpoint(fleet.qc(10), only=QUORUM)
    v3 = fleet.appliances["v3"]
    qc = fleet.qc(15)
    out = v3.handle_sign(
        *fleet.request(fleet.propose(qc).psbt, qc), [raw(regtest, t1), raw(regtest, t2)]
    )
    assert out.signed, out.reasons
