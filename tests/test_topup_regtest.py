"""Fee top-ups from a single-signature fee wallet, on a real regtest node."""

from __future__ import annotations

import pytest
from clidirs import cli_dir, cli_sign
from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput
from helpers import MAGIC, SCRIPT_IDS, SCRIPT_PAIRS, Fleet

from anchorharness.proposal import collect
from anchornode.feewallet import select_topup, sign_topups
from bftanchor.descriptor import EpochMultisig
from bftanchor.payload import Payload
from bftanchor.template import (
    P2WPKH_WITNESS,
    TopUp,
    build_checkpoint_psbt,
    build_checkpoint_tx,
    estimate_vsize,
    finalize,
)


@pytest.fixture(params=SCRIPT_PAIRS, ids=SCRIPT_IDS)
def fleet(regtest, tmp_path, request):
    """A coin running low, on wsh epochs and on tapscript epochs (whose signatures commit
    to the top-up inputs' previous outputs too, BIP341)."""
    return Fleet(regtest, tmp_path, tag=request.node.name, value=20_000, scripts=request.param)


def topped_up_psbt(fleet, topup: TopUp, qc, fee: int | None = None):
    ms = EpochMultisig(fleet.records[0])
    payload = Payload(0, qc.round, qc.commit_state_id, magic=MAGIC)
    if fee is None:
        sizing = build_checkpoint_tx(fleet.coin, payload, ms, 1, topup)
        fee = 2 * estimate_vsize(sizing, ms, P2WPKH_WITNESS * len(topup.inputs))
    return build_checkpoint_psbt(fleet.coin, ms, payload, ms, fee, topup=topup), ms


def test_topup_signed_by_appliances_and_fee_wallet_accepted_by_node(fleet, regtest):
    wallet = regtest.wallet_rpc
    topup = select_topup(wallet, 50_000, 5_000)
    qc = fleet.qc(5)
    psbt, ms = topped_up_psbt(fleet, topup, qc)
    from anchorharness.proposal import Proposal

    proposal = Proposal(psbt, qc, [fleet.records[0]], ms, ms, 0)
    signed, signed_by, refusals = collect(proposal, fleet.peers())
    assert len(signed_by) == 3, refusals
    # The appliances signed only the coin's input.
    assert all(not signed.inputs[i].partial_sigs for i in range(1, len(signed.inputs)))
    tx = finalize(sign_topups(wallet, signed), ms)
    accept = regtest.rpc.testmempoolaccept([tx.serialize().hex()])[0]
    assert accept["allowed"], accept
    assert tx.vout[1].value == fleet.coin.value + 50_000
    if ms.is_taproot:
        # BIP341 signatures commit to the top-up's previous output: a node proves the
        # quorum signed only with it (found unspent through gettxout, as peers do).
        from types import SimpleNamespace

        from anchornode.chainview import ChainView
        from appliance.lineage import quorum_signers

        assert quorum_signers(tx, fleet.coin, ms) == []
        view = SimpleNamespace(read=lambda m, *a: getattr(regtest.rpc, m)(*a))
        prevouts = ChainView.topup_prevouts(view, tx)  # type: ignore[arg-type]
        assert len(prevouts) == len(tx.vin) - 1
        assert len(quorum_signers(tx, fleet.coin, ms, prevouts)) == ms.threshold


def test_change_larger_than_topups_is_refused(fleet, regtest):
    """An initiator must not drain the coin through 'change' to an address of its own."""
    wallet = regtest.wallet_rpc
    real = select_topup(wallet, 0, 1_000)
    qc = fleet.qc(5)
    psbt, ms = topped_up_psbt(fleet, real, qc, fee=1_000)
    tx = psbt.tx
    steal = 15_000
    # Move part of the coin's value into output 2.
    tx.vout[1].value -= steal
    tx.vout[2].value += steal
    bad = PSBT(tx)
    for mine, theirs in zip(bad.inputs, psbt.inputs, strict=True):
        mine.witness_utxo = theirs.witness_utxo
        mine.non_witness_utxo = theirs.non_witness_utxo
        mine.witness_script = theirs.witness_script
        mine.bip32_derivations = theirs.bip32_derivations
    out = fleet.appliances["v0"].handle_sign(*fleet.request(bad, qc))
    assert not out.signed
    assert any("more than the top-ups" in r for r in out.reasons), out.reasons
    assert any("expected at least the coin's" in r for r in out.reasons), out.reasons


def test_topup_input_locked_by_the_multisig_is_refused(fleet, regtest):
    qc = fleet.qc(5)
    ms = EpochMultisig(fleet.records[0])
    from bftanchor.template import Outpoint

    prev = Transaction(2, [TransactionInput(b"\xee" * 32, 0)],
                       [TransactionOutput(30_000, ms.script_pubkey)], 0)
    fake = TopUp(((Outpoint(prev.txid().hex(), 0), TransactionOutput(30_000, ms.script_pubkey)),),
                 10_000, Script(b"\x00\x14" + b"\x01" * 20), (prev,))
    psbt, _ = topped_up_psbt(fleet, fake, qc, fee=1_000)
    out = fleet.appliances["v0"].handle_sign(*fleet.request(psbt, qc))
    assert not out.signed
    assert any("locked by a checkpoint multisig" in r for r in out.reasons), out.reasons


def test_inflated_topup_amount_cannot_drain_the_coin(fleet, regtest, request, tmp_path):
    """Issue 10 item 1. A top-up declaring more than it holds would let the initiator
    shrink the coin and pay itself the difference as change, with every appliance
    reporting a normal fee (segwit v0 signs the coin's amount, not the top-ups'). Every
    appliance refuses it; the honest top-up is signed, and the node's view of the coin
    afterwards is the value before plus the top-up, the fee being what the appliances
    reported, to the satoshi."""
    wallet = regtest.wallet_rpc
    qc = fleet.qc(5)
    honest = select_topup(wallet, 10_000, 5_000)
    real_value = honest.inputs[0][1].value
    lie = 8_000
    # The attack: declare `lie` more than the top-up holds, take it from the coin.
    forged_utxo = TransactionOutput(real_value + lie, honest.inputs[0][1].script_pubkey)
    forged = TopUp(((honest.inputs[0][0], forged_utxo),) + honest.inputs[1:], honest.amount,
                   honest.change_script)
    attack, ms = topped_up_psbt(fleet, forged, qc, fee=2_000)
    # The coin shrinks by `lie`, which "change" takes (embit builds psbt.tx from the maps).
    attack.outputs[1].value -= lie
    attack.outputs[2].value += lie
    assert attack.tx.vout[1].value == fleet.coin.value + honest.amount - lie
    b64 = attack.to_string()
    for vid in fleet.appliances:  # offered to every appliance, through its command
        rc, out = cli_sign(cli_dir(fleet, vid, request.node.name),
                           dict(zip(("psbt", "qc", "records"), fleet.request(b64, qc),
                                    strict=True)), tmp_path / f"attack-{vid}.json")
        assert rc == 1 and not out["signed"], vid
        text = " | ".join(out["reasons"])
        assert "carries no non_witness_utxo" in text, text
    # The same lie with the real previous transaction attached: the proof contradicts it.
    with_proof = PSBT.from_string(b64)
    with_proof.inputs[1].non_witness_utxo = honest.prev_txs[0]
    out = fleet.appliances["v0"].handle_sign(*fleet.request(with_proof, qc))
    assert not out.signed
    assert any(f"declares {real_value + lie} sat, its previous transaction proves "
               f"{real_value} sat" in r for r in out.reasons), out.reasons

    before = regtest.rpc.gettxout(fleet.coin.outpoint.txid, fleet.coin.outpoint.vout)
    psbt, ms = topped_up_psbt(fleet, honest, qc)
    from anchorharness.proposal import Proposal

    proposal = Proposal(psbt, qc, [fleet.records[0]], ms, ms, 0)
    signed, signed_by, refusals = collect(proposal, fleet.peers())
    assert len(signed_by) == 3, refusals
    reported = fleet.appliances["v0"].journal.state().by_txid(psbt.tx.txid().hex()).fee
    tx = finalize(sign_topups(wallet, signed), ms)
    txid = regtest.rpc.sendrawtransaction(tx.serialize().hex())
    assert regtest.rpc.getmempoolentry(txid)["fees"]["base"] * 10**8 == pytest.approx(reported)
    regtest.mine(1)
    after = regtest.rpc.gettxout(txid, 1)
    from anchornode.pow.rpc import to_sat

    topups = sum(u.value for _, u in honest.inputs)
    change = sum(o.value for o in tx.vout[2:])
    assert to_sat(after["value"]) == to_sat(before["value"]) + topups - change - reported
    assert to_sat(after["value"]) == to_sat(before["value"]) + honest.amount


def test_tapscript_lineage_with_topups_needs_their_funding(fleet, regtest):
    """An appliance catching up on a topped-up tapscript checkpoint proves its signatures
    only with the top-ups' previous outputs (BIP341): given the funding transactions in
    the lineage it adopts the checkpoint, without them it names what is missing."""
    if not fleet.records[0].is_taproot:
        pytest.skip("BIP143 (wsh) signatures commit to the coin's own amount only")
    from anchorharness.proposal import Proposal
    from bftanchor.template import Coin, Outpoint

    wallet = regtest.wallet_rpc
    topup = select_topup(wallet, 50_000, 5_000)
    qc = fleet.qc(5)
    psbt, ms = topped_up_psbt(fleet, topup, qc)
    proposal = Proposal(psbt, qc, [fleet.records[0]], ms, ms, 0)
    quorum = [p for p in fleet.peers() if p.validator_id != "v3"]
    signed, signed_by, refusals = collect(proposal, quorum)
    assert len(signed_by) == 3, refusals
    tx = finalize(sign_topups(wallet, signed), ms)
    txid = regtest.rpc.sendrawtransaction(tx.serialize().hex())
    regtest.mine(1)
    funding = sorted({wallet.gettransaction(t.txid.hex())["hex"] for t in tx.vin[1:]})
    fleet.coin = Coin(Outpoint(txid, 1), tx.vout[1].value, 0)
    qc2 = fleet.qc(10)
    request = fleet.request(fleet.propose(qc2).psbt, qc2)
    v3 = fleet.appliances["v3"]
    out = v3.handle_sign(*request, [tx.serialize().hex()])
    assert not out.signed
    assert "top-up inputs" in " ".join(out.reasons) and "not in the lineage" in " ".join(
        out.reasons)
    out = v3.handle_sign(*request, [tx.serialize().hex(), *funding])
    assert out.signed, out.reasons
    assert [e.kind for e in v3.journal.state().entries][:1] == ["adopted"]
