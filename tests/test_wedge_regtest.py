"""Issue 10 item 2: an attacker who controls one initiator and one node cannot wedge
honest appliances (n = 4, k = 3), on a real regtest node.

v0's node and initiator are the attacker's: it sends any request and any lineage it
likes to every appliance. It tries unmined fee-ladder levels, a signed-but-unused newer
QC, forks and junk offered as lineage, a twin QC and a lower round. Afterwards every
appliance signs the next real checkpoint through `bft-anchor appliance sign`, given the
lineage an honest node sends (the chain's real spends), and the node accepts it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from clidirs import cli_dir
from embit.transaction import Transaction
from helpers import MAGIC, Fleet, twin_qc

from anchorharness.proposal import assemble, collect, propose
from bftanchor.template import Coin, Outpoint, finalize

pytestmark = pytest.mark.integration


def ladder(fleet: Fleet, coin: Coin, qc, who: list[str], rates=(2.0, 3.0, 4.0)):
    """A fee ladder for one payload, every level signed by `who` and finalized."""
    peers = [p for p in fleet.peers() if p.validator_id in who]
    out = []
    for rate in rates:
        prop = propose(coin, qc, fleet.records, False, rate, MAGIC)
        psbt, signed_by, refusals = collect(prop, peers)
        assert len(signed_by) >= 3, refusals
        out.append(assemble(prop, psbt))
    return out


def ask(fleet: Fleet, vid: str, coin: Coin, qc, lineage: list[str] | None = None,
        rate: float = 2.0):
    prop = propose(coin, qc, fleet.records, False, rate, MAGIC)
    out = fleet.appliances[vid].handle_sign(*fleet.request(prop.psbt, qc), lineage)
    return prop, out


def out1(tx: Transaction) -> Coin:
    return Coin(Outpoint(tx.txid().hex(), 1), tx.vout[1].value, 0)


def test_honest_appliances_follow_the_real_chain_whatever_they_were_shown(regtest, tmp_path):
    tag = "wedge"
    fleet = Fleet(regtest, tmp_path, tag=tag)
    hexes = lambda txs: [t.serialize().hex() for t in txs]  # noqa: E731

    # Round A: v0, v1, v2 sign a three-level ladder for round 5; the node mines level 1.
    l1, l2, l3 = ladder(fleet, fleet.genesis, fleet.qc(5), ["v0", "v1", "v2"])
    regtest.rpc.sendrawtransaction(l1.serialize().hex())
    regtest.mine(1)

    # The attacker's moves, each against an honest appliance:
    # (a) v3, who missed round A, is shown the never-mined level 3 as lineage and signs a
    #     checkpoint on its output (a branch that can never be mined).
    _, out = ask(fleet, "v3", out1(l3), fleet.qc(8), hexes([l3]))
    assert out.signed, out.reasons
    # (b) v1 signs on the unmined level 3 too, with a newer QC.
    _, out = ask(fleet, "v1", out1(l3), fleet.qc(12), hexes([l3]))
    assert out.signed, out.reasons
    # (c) v2 signs a newer QC on the real coin, which the network will never use.
    unused, out = ask(fleet, "v2", out1(l1), fleet.qc(12))
    assert out.signed, out.reasons
    # (d) A fork with k - 1 valid signatures, junk, and a twin QC: refused, nothing adopted.
    prop = propose(out1(l1), fleet.qc(13), fleet.records, False, 2.0, MAGIC)
    for vid in ("v0", "v2"):  # the attacker's key and one it tricked
        signed = fleet.signers[vid].sign(prop.psbt, prop.source)
        prop.psbt.inputs[0].partial_sigs.update(signed.inputs[0].partial_sigs)
    prop.psbt.inputs[0].partial_sigs.update(
        {k: v for k, v in list(fleet.signers["v1"].sign(prop.psbt, prop.source)
                               .inputs[0].partial_sigs.items())})
    full = finalize(prop.psbt, prop.source)
    fork = Transaction.from_string(full.serialize().hex())
    items = fork.vin[0].witness.items
    fork.vin[0].witness.items = [items[0], items[1], b"\x30" + items[2][1:], items[3]]
    for vid in ("v1", "v3"):
        _, out = ask(fleet, vid, out1(fork), fleet.qc(14),
                     [fork.serialize().hex(), "00", "zz", l1.serialize().hex()[:50]])
        assert not out.signed and "not the expected coin" in " ".join(out.reasons)
    tq = twin_qc(fleet, fleet.qc(8))  # v3 signed round 8: its twin is an equivocation
    _, out = ask(fleet, "v3", out1(l1), tq, hexes([l1]))
    assert not out.signed and "equivocation" in " ".join(out.reasons)
    assert not any(e.txid == fork.txid().hex()
                   for a in fleet.appliances.values() for e in a.journal.state().entries)

    # Round B (honest initiator v3): the real checkpoint on level 1's output, round 10.
    # v2 refuses (it signed another checkpoint on that coin: never two per outpoint); the
    # others sign, v3 after following the real level 1 from the lineage.
    qc10 = fleet.qc(10)  # (the simulator makes a new commit per call: keep this one)
    real_b = propose(out1(l1), qc10, fleet.records, False, 2.0, MAGIC)
    signers = []
    for vid in ("v3", "v1", "v0", "v2"):
        o = fleet.appliances[vid].handle_sign(*fleet.request(real_b.psbt, qc10),
                                              hexes([l1]))
        if o.signed:
            signers.append(vid)
            real_b.psbt.inputs[0].partial_sigs.update(
                type(real_b.psbt).from_string(o.psbt).inputs[0].partial_sigs)
        elif vid == "v2":
            assert "already has a checkpoint with another payload" in " ".join(o.reasons)
    assert signers == ["v3", "v1", "v0"], signers
    t = assemble(real_b, real_b.psbt)
    regtest.rpc.sendrawtransaction(t.serialize().hex())
    regtest.mine(1)
    # A lower round on the new coin is refused by all, whatever lineage comes with it.
    for vid in fleet.appliances:
        _, out = ask(fleet, vid, out1(t), fleet.qc(9), hexes([l1, t]))
        assert not out.signed and "rounds only increase" in " ".join(out.reasons), vid
    assert unused.txid != t.txid().hex()

    # Round C: the next real checkpoint. Every appliance signs it through the CLI, given
    # the chain's real spends as lineage, and the node accepts the result.
    qc = fleet.qc(15)
    real_c = propose(out1(t), qc, fleet.records, False, 2.0, MAGIC)
    request = {"psbt": real_c.psbt.to_string(), "qc": qc.to_json(),
               "records": [r.to_json() for r in fleet.records.values()],
               "lineage": hexes([l1, t])}
    req = tmp_path / "request.json"
    req.write_text(json.dumps(request))
    for vid in ("v0", "v1", "v2", "v3"):
        fleet.appliances[vid].journal.close()
        res = subprocess.run([sys.executable, "-m", "anchorcli", "appliance", "sign",
                              "--config", str(cli_dir(fleet, vid, tag)), "--request",
                              str(req)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (vid, res.stdout, res.stderr)
        signed = type(real_c.psbt).from_string(json.loads(res.stdout)["psbt"])
        real_c.psbt.inputs[0].partial_sigs.update(signed.inputs[0].partial_sigs)
    assert len(real_c.psbt.inputs[0].partial_sigs) == 4
    final = assemble(real_c, real_c.psbt)
    txid = regtest.rpc.sendrawtransaction(final.serialize().hex())
    regtest.mine(1)
    assert regtest.rpc.getrawtransaction(txid, True)["confirmations"] == 1
