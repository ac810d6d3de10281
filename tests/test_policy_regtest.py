"""The appliance's policy against a real regtest node: what it signs is accepted by the
node, and every kind of bad request is refused with its own reason, journal unchanged."""

from __future__ import annotations

import copy

import pytest
from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import TransactionOutput
from helpers import MAGIC, SCRIPT_IDS, SCRIPT_PAIRS, Fleet, twin_qc

from appliance.policy import Limits
from bftanchor.bftsig import sign_compact
from bftanchor.descriptor import EpochMultisig
from bftanchor.payload import Payload
from bftanchor.template import build_checkpoint_psbt


@pytest.fixture(params=SCRIPT_PAIRS, ids=SCRIPT_IDS)
def fleet(regtest, tmp_path, request):
    """Every test runs on wsh epochs and again on tapscript epochs."""
    return Fleet(regtest, tmp_path, tag=request.node.name, scripts=request.param)


def journal_snapshot(appliance):
    return [(e.txid, e.signed_psbt) for e in appliance.journal.state().entries]


def assert_refused(fleet, b64, qc_json, records, *fragments):
    a = fleet.appliances["v0"]
    before = journal_snapshot(a)
    out = a.handle_sign(b64, qc_json, records)
    assert not out.signed and out.psbt is None
    text = " | ".join(out.reasons)
    for f in fragments:
        assert f in text, text
    assert journal_snapshot(a) == before
    assert a.journal.decisions(1)[0]["decision"] == "refused"
    return out


def test_checkpoints_and_handover_accepted_by_node(fleet, regtest):
    qc = fleet.qc(5)
    _, proposal, _ = fleet.mempool_accepted(qc)
    assert proposal.source.threshold == 3
    fleet.checkpoint(qc)
    height = regtest.rpc.getblockcount()
    txid = fleet.checkpoint(fleet.qc(10))
    assert regtest.rpc.getrawtransaction(txid, True)["confirmations"] == 1
    assert regtest.rpc.getblockcount() == height + 1
    ho = fleet.checkpoint(fleet.qc(90), handover=True)
    out = regtest.rpc.getrawtransaction(ho, True)["vout"][1]["scriptPubKey"]["hex"]
    assert out == EpochMultisig(fleet.records[1]).script_pubkey.data.hex()
    assert fleet.coin.epoch == 1
    qc1 = fleet.qc(105, epoch=1)
    txid = fleet.checkpoint(qc1)
    assert (
        Payload.from_script(
            bytes.fromhex(
                regtest.rpc.getrawtransaction(txid, True)["vout"][0]["scriptPubKey"]["hex"]
            )
        ).epoch
        == 1
    )


def test_payload_of_another_qc(fleet):
    qc_a, qc_b = fleet.qc(5), fleet.qc(6)
    p = fleet.propose(qc_a)
    assert_refused(fleet, *fleet.request(p.psbt, qc_b), "output 0 carries epoch 0 round 5")


def test_coin_to_another_script(fleet, regtest, tmp_path):
    other = Fleet(regtest, tmp_path / "other", tag="other-fleet")
    qc = fleet.qc(5)
    payload = Payload(0, qc.round, qc.commit_state_id, magic=MAGIC)
    src = EpochMultisig(fleet.records[0])
    psbt = build_checkpoint_psbt(fleet.coin, src, payload, EpochMultisig(other.records[0]), 500)
    assert_refused(fleet, *fleet.request(psbt, qc), "output 1 pays the coin to",
                   "expected epoch 0's multisig")


def test_handover_to_uncertified_record(fleet):
    qc = fleet.qc(90)
    p = fleet.propose(qc, handover=True)
    recs = [fleet.records[0].to_json(), copy.deepcopy(fleet.records[1].to_json())]
    recs[1]["certificate"] = {}
    # The appliance holds only epoch 0; an uncertified epoch 1 is not a destination.
    assert_refused(
        fleet, *fleet.request(p.psbt, qc, recs), "not certified", "output 1 pays the coin"
    )


def test_fee_over_limit(fleet):
    qc = fleet.qc(5)
    p = fleet.propose(qc, fee_rate=1000)
    assert_refused(fleet, *fleet.request(p.psbt, qc), "exceeds the limit of 100000 sat")
    p = fleet.propose(qc, fee_rate=300)
    assert_refused(fleet, *fleet.request(p.psbt, qc), "fee rate", "exceeds the limit of 200.0")


def test_extra_output(fleet, regtest):
    qc = fleet.qc(5)
    p = fleet.propose(qc)
    psbt = PSBT.parse(p.psbt.serialize())
    addr_spk = Script(b"\x00\x14" + b"\x42" * 20)
    from embit.psbt import OutputScope

    psbt.outputs.append(OutputScope(vout=TransactionOutput(10_000, addr_spk)))
    psbt.outputs[1].vout.value -= 10_000
    psbt = PSBT.parse(psbt.serialize())
    assert len(psbt.tx.vout) == 3
    assert_refused(fleet, *fleet.request(psbt, qc), "output 2 (top-up change) without any top-up")


def test_qc_short_of_k(fleet):
    qc = fleet.qc(5)
    p = fleet.propose(qc)
    qj = qc.to_json()
    keep = list(qj["signatures"])[:2]
    qj["signatures"] = {k: qj["signatures"][k] for k in keep}
    b64, _, recs = fleet.request(p.psbt, qc)
    assert_refused(fleet, b64, qj, recs, "BelowThreshold")


def test_qc_signed_by_non_member(fleet):
    qc = fleet.qc(5)
    p = fleet.propose(qc)
    qj = qc.to_json()
    qj["signatures"]["mallory"] = sign_compact(b"\x05" * 32, qc.signed_digest()).hex()
    b64, _, recs = fleet.request(p.psbt, qc)
    assert_refused(fleet, b64, qj, recs, "UnknownSigner", "mallory")


def test_replayed_lower_round(fleet):
    qc5, qc6 = fleet.qc(5), fleet.qc(6)
    p6 = fleet.propose(qc6)
    assert fleet.appliances["v0"].handle_sign(*fleet.request(p6.psbt, qc6)).signed
    p5 = fleet.propose(qc5)
    assert_refused(fleet, *fleet.request(p5.psbt, qc5), "already has a checkpoint with another "
                   "payload (epoch 0 round 6", "found epoch 0 round 5")


def test_equivocation_same_round_refused(fleet):
    qc = fleet.qc(5)
    p = fleet.propose(qc)
    a = fleet.appliances["v0"]
    assert a.handle_sign(*fleet.request(p.psbt, qc)).signed
    # Same (epoch, round), another commit_state_id: a forged twin QC signed by the quorum.
    tq = twin_qc(fleet, qc, "77" * 32)
    p2 = fleet.propose(tq)
    assert_refused(fleet, *fleet.request(p2.psbt, tq), "equivocation")


def test_repeat_is_answered_from_journal_and_fee_bump_allowed(fleet):
    qc = fleet.qc(5)
    p = fleet.propose(qc, fee_rate=2)
    a = fleet.appliances["v0"]
    first = a.handle_sign(*fleet.request(p.psbt, qc))
    again = a.handle_sign(*fleet.request(p.psbt, qc))
    assert first.signed and again.signed and again.from_journal and again.psbt == first.psbt
    bump = fleet.propose(qc, fee_rate=5)
    assert a.handle_sign(*fleet.request(bump.psbt, qc)).signed
    # Another level of the same ladder, whatever its fee: it differs in the fee alone.
    lower = fleet.propose(qc, fee_rate=3)
    assert a.handle_sign(*fleet.request(lower.psbt, qc)).signed


def test_wrong_input_refused(fleet, regtest, tmp_path):
    other = Fleet(regtest, tmp_path / "o2", tag="wrong-input")
    qc = fleet.qc(5)
    src = EpochMultisig(fleet.records[0])
    payload = Payload(0, qc.round, qc.commit_state_id, magic=MAGIC)
    from bftanchor.template import Coin

    stray = Coin(other.genesis.outpoint, other.genesis.value, 0)
    psbt = build_checkpoint_psbt(stray, src, payload, src, 500)
    assert_refused(fleet, *fleet.request(psbt, qc), "not the expected coin")


@pytest.mark.parametrize(
    "garbage, fragment",
    [
        ("not base64!", "malformed PSBT"),
        ("cHNidP8BAAoCAAAAAAAAAAAAAA==", "malformed PSBT"),
        (12345, "psbt must be a base64 string, found int"),
    ],
)
def test_malformed_psbt(fleet, garbage, fragment):
    qc = fleet.qc(5)
    _, qj, recs = fleet.request(fleet.propose(qc).psbt, qc)
    assert_refused(fleet, garbage, qj, recs, fragment)


def test_limits_are_the_appliances_own(regtest, tmp_path):
    fleet = Fleet(regtest, tmp_path, limits=Limits(max_fee_sat=300, max_fee_rate=1.0), tag="lim")
    qc = fleet.qc(5)
    assert_refused(
        fleet,
        *fleet.request(fleet.propose(qc, fee_rate=2).psbt, qc),
        "exceeds the limit of 300 sat",
    )


def test_twenty_validators_checkpoint_accepted_by_node(regtest, tmp_path):
    fleet = Fleet(regtest, tmp_path, n=20, tag="twenty")
    qc = fleet.qc(5)
    _, proposal, _ = fleet.mempool_accepted(qc)
    assert proposal.source.threshold == 14
