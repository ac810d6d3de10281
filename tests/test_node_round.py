"""The node's signing round and peer precheck, in one process, without a PoW node.

Four NodeServices (the devnet's `local_node`s) talk through LocalNet (sealed,
authenticated messages; no sockets) and read an in-memory FakeChain; each signs on
a real in-process appliance (policy, journal, software signer). What the round produces is checked
with the same script code the audit uses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from embit.psbt import PSBT
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from anchorharness.fakechain import FakeChain
from anchorharness.fleet import validator_set
from anchornode.appliance_client import InProcessAppliance
from anchornode.delivery import CheckpointFailed
from anchornode.ladder import build_ladder
from anchornode.localnet import LocalNet, local_node
from anchornode.peer_protocol import Message
from anchornode.qcsource import MemorySource
from anchornode.schedule import ScheduleConfig
from anchornode.service import NodeService
from appliance.journal import Journal
from appliance.lineage import quorum_signers
from appliance.policy import Limits
from appliance.signing import Appliance
from bftanchor.deployment import Deployment
from bftanchor.descriptor import multisig_for
from bftanchor.qc import QC
from bftanchor.signreply import SignReply
from bftanchor.template import Coin, Outpoint

N = 4
ROUNDS = 100


class Refusing:
    def sign(self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: Any) -> SignReply:
        return SignReply.refusal(["refused by a test"])


class WrongKey:
    """Signs with a key that is not the validator's: its signature must not count."""

    def __init__(self, other: Appliance) -> None:
        self.other = other

    def sign(self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: Any) -> SignReply:
        return self.other.handle_sign(psbt_b64, qc_json, records_json, lineage).reply()


class Net:
    def __init__(self, tmp: Path) -> None:
        self.sim, self.signers, self.records = validator_set("round", N, ROUNDS, seed=7)
        self.chain = FakeChain()
        ms0 = multisig_for(self.records[0])
        funding = Transaction(
            vin=[TransactionInput(bytes(32), 0)],
            vout=[TransactionOutput(10_000_000, ms0.script_pubkey)],
        )
        self.chain.mine([funding.serialize().hex()])
        genesis = Coin(Outpoint(funding.txid().hex(), 0), 10_000_000, 0)
        self.deployment = Deployment("litecoin-regtest", b"BFTA", genesis, self.records[0], 5)
        self.source = MemorySource()
        for r in self.records.values():
            self.source.publish_record(r)
        self.net = LocalNet()
        self.appliances = {
            vid: Appliance(self.deployment, Journal(tmp / f"{vid}.sqlite", genesis), s, Limits())
            for vid, s in self.signers.items()
        }
        self.nodes = {vid: self.node(vid) for vid in self.signers}

    def node(self, vid: str, appliance: Any = None) -> NodeService:
        secret = next(v.bft_secret for v in self.sim.validators if v.id == vid)
        return local_node(
            self.net,
            vid,
            secret,
            self.deployment,
            appliance or InProcessAppliance(self.appliances[vid]),
            [self.chain],
            self.source,
            list(self.signers),
            ScheduleConfig(interval_blocks=1, initiator_timeout=5.0),
        )

    def qc(self, round: int, epoch: int = 0) -> QC:
        qc = self.sim.qc(epoch, round)
        self.source.publish_qc(qc)
        return qc

    def proposal(self, initiator: str, qc: QC, seq: int = 0, attempt: int = 0) -> dict:
        node = self.nodes[initiator]
        node.view.poll()
        coin = node.view.coin
        psbts = build_ladder(
            node.cfg, node.view.records, b"BFTA", [self.chain], coin, qc, False
        )
        return {
            "seq": seq,
            "attempt": attempt,
            "psbts": [p.to_string() for p in psbts],
            "qc": qc.to_json(),
            "records": [r.to_json() for r in self.records.values()],
            "lineage": [],
        }


@pytest.fixture
def net(tmp_path: Path) -> Net:
    n = Net(tmp_path)
    for node in n.nodes.values():
        node.view.refresh_records()
    yield n
    for node in n.nodes.values():
        node.shutdown()


def msg(sender: str, body: dict, type: str = "propose") -> Message:
    return Message(type, sender, 0, body, 0.0)


def test_round_collects_k_signatures_delivers_and_announces(net: Net) -> None:
    qc = net.qc(10)
    v0 = net.nodes["v0"]
    v0.view.poll()
    coin = v0.view.coin
    txid = v0.round.run(0, 0, coin, qc, False)
    assert net.chain.sent == [txid]
    tx = Transaction.from_string(net.chain.mempool[txid])
    ms = multisig_for(net.records[0])
    assert len(quorum_signers(tx, coin, ms)) == ms.threshold
    ladder = v0.ladders[coin.outpoint]
    assert len(ladder.rungs) == 3 and ladder.fees == sorted(ladder.fees)
    assert ladder.txids[0] == txid
    # Every rung is a complete checkpoint: the initiator never asks the quorum again.
    for raw in ladder.rungs:
        assert len(quorum_signers(Transaction.from_string(raw), coin, ms)) == ms.threshold
    net.chain.mine()
    for node in net.nodes.values():
        node.view.poll()
        assert node.view.seq == 1 and node.view.coin.outpoint == Outpoint(txid, 1)
        assert coin.outpoint not in node.ladders  # the confirmed coin's ladder is forgotten


def test_tick_initiates_only_on_this_nodes_turn(net: Net) -> None:
    net.qc(10)
    net.nodes["v1"].tick(now=1000.0)
    assert net.chain.sent == []  # checkpoint 0 attempt 0 is v0's
    net.nodes["v0"].tick(now=1000.0)
    assert len(net.chain.sent) == 1
    net.nodes["v0"].tick(now=1000.5)
    assert len(net.chain.sent) == 1  # the coin is spent in the mempool: wait


def test_failover_hands_the_attempt_to_the_next_validator(net: Net) -> None:
    net.qc(10)
    v1 = net.nodes["v1"]
    v1.tick(now=1000.0)
    assert net.chain.sent == []
    v1.tick(now=1000.0 + 5.0)  # one initiator_timeout later: attempt 1 is v1's
    assert len(net.chain.sent) == 1
    assert v1.last_attempt[0] == 1


def test_bad_signatures_and_refusals_do_not_count(net: Net) -> None:
    qc = net.qc(10)
    v0 = net.nodes["v0"]
    # v1 signs with v2's key; v2 refuses: only v3 signs, so v0 (which signs once k - 1
    # peers have) does not sign either, and k = 3 is not reached.
    net.node("v1", WrongKey(net.appliances["v2"]))
    net.node("v2", Refusing())
    v0.view.poll()
    with pytest.raises(CheckpointFailed, match=r"1 of 3 signatures \(v3\)"):
        v0.round.run(0, 0, v0.view.coin, qc, False)
    assert net.chain.sent == []


def test_a_silent_peer_does_not_stop_the_round(net: Net) -> None:
    qc = net.qc(10)
    net.net.down.add("v3")
    v0 = net.nodes["v0"]
    v0.view.poll()
    txid = v0.round.run(0, 0, v0.view.coin, qc, False)
    assert txid in net.chain.mempool


def test_precheck_accepts_the_honest_proposal_once_per_attempt(net: Net) -> None:
    qc = net.qc(10)
    body = net.proposal("v0", qc)
    v1 = net.nodes["v1"].responder
    psbts, reasons = v1.precheck(msg("v0", body))
    assert reasons == [] and psbts == body["psbts"]
    assert v1.precheck(msg("v0", body)) == (body["psbts"], [])  # prechecks record nothing
    assert v1.on_propose(msg("v0", body))[0] == "signatures"  # signed: now it is recorded
    other = net.proposal("v0", net.qc(11))
    _, reasons = v1.precheck(msg("v0", other))
    assert reasons == ["a different proposal for attempt 0 was signed"]


def test_precheck_refuses_an_initiator_out_of_turn(net: Net) -> None:
    body = net.proposal("v0", net.qc(10))
    _, reasons = net.nodes["v1"].responder.precheck(msg("v2", body))
    assert reasons == ["v2 is not the initiator of attempt 0 (expected v0)"]


def test_precheck_refuses_a_stale_attempt_and_a_wrong_seq(net: Net) -> None:
    qc = net.qc(10)
    v1 = net.nodes["v1"].responder
    assert v1.on_propose(msg("v1", net.proposal("v0", qc, attempt=1)))[0] == "signatures"
    _, reasons = v1.precheck(msg("v0", net.proposal("v0", qc, attempt=0)))
    assert reasons == ["attempt 0 is superseded by attempt 1"]
    _, reasons = v1.precheck(msg("v1", net.proposal("v0", qc, seq=1)))
    assert reasons == ["proposal for checkpoint 1, this node sees 0"]


def test_precheck_refuses_a_forged_qc_and_a_foreign_coin_and_payee(net: Net) -> None:
    qc = net.qc(10)
    body = net.proposal("v0", qc)
    forged = qc.to_json()
    forged["ledger_commit_info"]["commit_state_id"] = "11" * 32
    _, reasons = net.nodes["v1"].responder.precheck(msg("v0", dict(body, qc=forged)))
    assert any(r.startswith("QC does not verify") for r in reasons)
    assert "output 0 is not the QC's payload" in reasons

    psbt = PSBT.from_string(body["psbts"][0])
    psbt.inputs[0].txid = bytes(32)
    psbt.outputs[1].script_pubkey = psbt.outputs[0].script_pubkey
    forged_body = dict(body, psbts=[psbt.to_string()])
    _, reasons = net.nodes["v2"].responder.precheck(msg("v0", forged_body))
    assert "the PSBT does not spend the coin this node sees" in reasons
    assert "output 1 pays the coin elsewhere" in reasons


def test_precheck_refuses_malformed_proposals(net: Net) -> None:
    v1 = net.nodes["v1"].responder
    body = net.proposal("v0", net.qc(10))
    for bad in ({}, {"seq": "x", "attempt": 0, "psbts": [], "qc": {}}, {"seq": 0},
                dict(body, psbts=[]), dict(body, psbts=body["psbts"] * 3),
                dict(body, attempt=-1), dict(body, seq=True), dict(body, attempt=1.5),
                dict(body, lineage=["00"] * 1000), dict(body, records=[]),
                {k: v for k, v in body.items() if k != "lineage"}):
        _, reasons = v1.precheck(msg("v0", bad))
        assert len(reasons) == 1 and reasons[0].startswith("malformed proposal"), bad
    _, reasons = v1.precheck(msg("v0", dict(body, psbts=["not base64"])))
    assert reasons[0].startswith("malformed PSBT")


def test_sealed_proposal_from_an_outsider_is_dropped(net: Net) -> None:
    from anchornode.peer_protocol import seal

    body = net.proposal("v0", net.qc(10))
    raw = seal("propose", "v0", 0, body, hashlib.sha256(b"not v0").digest())
    reply = net.nodes["v1"].auth.open(net.nodes["v1"].responder.handle(raw))
    assert reply.type == "error"


def test_one_signed_message_cannot_halt_the_network(net: Net) -> None:
    """Issue 12 item 1: an absurd attempt with no PSBTs was stored as the accepted one
    and every honest proposal after it was refused as superseded."""
    qc = net.qc(10)
    v1 = net.nodes["v1"].responder
    n = len(net.records[0].validators)
    absurd = 10**12 * n + 2  # attempt whose initiator (seq 0) is v2
    body = dict(net.proposal("v0", qc), attempt=absurd)
    for liar_body in (dict(body, psbts=[]), body):
        kind, reply = v1.on_propose(msg("v2", liar_body))
        assert kind == "refuse"
    assert any("ahead of this node's clock" in r for r in reply["reasons"])
    assert v1.accepted.accepted == {}  # nothing recorded from a refused proposal
    kind, _ = v1.on_propose(msg("v0", net.proposal("v0", qc)))
    assert kind == "signatures"


def test_an_appliance_refusal_records_nothing(net: Net) -> None:
    qc = net.qc(10)
    v1 = net.node("v1", Refusing())
    assert v1.responder.on_propose(msg("v1", net.proposal("v0", qc, attempt=1)))[0] == "refuse"
    assert v1.responder.accepted.accepted == {}
    assert v1.responder.precheck(msg("v0", net.proposal("v0", qc)))[1] == []


def test_attempt_limit_follows_this_nodes_own_clock(net: Net) -> None:
    net.qc(10)
    v1 = net.nodes["v1"]
    v1.tick(now=1000.0)  # due from 1000 on: attempt 0 here
    assert v1.attempt_limit(0, 1000.0) == 1
    assert v1.attempt_limit(0, 1000.0 + 3 * 5.0) == 4  # three timeouts later


def _ask(port: int, data: bytes) -> dict:
    import socket

    from anchornode.peer_protocol import read_frame, unverified

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return unverified(read_frame(s))


def test_peer_port_answers_hostile_input_with_an_error_and_keeps_serving(net: Net) -> None:
    """Issue 12 item 7: 1e400, Infinity, deep nesting killed the handler thread."""
    import json
    import struct

    from anchornode.peer_protocol import seal, split_frame

    v1 = net.nodes["v1"]
    v1.start_server()
    port = v1.server.address[1]
    secret = next(v.bft_secret for v in net.sim.validators if v.id == "v2")

    def member_frame(body: bytes) -> bytes:
        head = json.loads(split_frame(seal("ping", "v2", 0, {}, secret))[0])
        head.update(len=len(body), body_sha256=hashlib.sha256(body).hexdigest())
        head.pop("sig")
        from bftanchor.bftsig import sign_compact
        from bftanchor.epoch import canonical_json

        head["sig"] = sign_compact(
            secret, hashlib.sha256(canonical_json(head).encode()).digest()).hex()
        raw = canonical_json(head).encode()
        return struct.pack(">I", len(raw)) + raw + body

    def header_only(text: bytes) -> bytes:
        return struct.pack(">I", len(text)) + text

    hostile = [
        b"GET / HTTP/1.0\r\n\r\n",
        b"\xff\xff\xff\xff" + b"x" * 100,
        header_only(b'{"v": 2, "epoch": 1e400}'),
        header_only(b'{"v": Infinity}'),
        header_only(b"[" * 1000 + b"]" * 1000),
        member_frame(b'{"x": 1e400}'),
        member_frame(b'{"x": -Infinity}'),
        member_frame(b"[" * 100_000 + b"]" * 100_000),
    ]
    for data in hostile:
        reply = _ask(port, data)
        assert reply["type"] == "error" and reply["body"]["reasons"], data[:40]
    propose = seal("propose", "v2", 0, {"seq": 0, "attempt": 10**30}, secret)
    reply = _ask(port, propose)
    assert reply["type"] == "refuse"
    assert _ask(port, seal("ping", "v2", 0, {}, secret))["type"] == "pong"


def test_nothing_newer_to_anchor_waits_for_a_newer_qc(net: Net) -> None:
    net.qc(10)
    assert net.nodes["v0"].tick(now=1000.0) is not None
    net.chain.mine()
    net.chain.mine([])
    net.chain.mine([])  # interval_blocks = 1: a checkpoint is due by height...
    v1 = net.nodes["v1"]
    assert v1.tick(now=1001.0) is None  # ...but round 10 is anchored already
    assert v1.view.last_round == (0, 10) and len(net.chain.sent) == 1
    net.qc(11)
    assert v1.tick(now=1002.0) is not None
    assert len(net.chain.sent) == 2


def test_an_initiator_adopts_the_qc_its_peers_are_bound_to(net: Net) -> None:
    """After a stall, two appliances signed for one QC of the coin and a returning
    initiator proposes a newer one: it must propose the bound QC, or k = 3 of 4 is
    never reached again (an appliance signs one payload per coin)."""
    old = net.qc(10)
    v1, v2 = net.nodes["v1"].responder, net.nodes["v2"].responder
    for r in (v1, v2):  # v1 and v2 signed v0's attempt for QC 10, v3 was away
        assert r.on_propose(msg("v0", net.proposal("v0", old)))[0] == "signatures"
    net.qc(30)
    for node in net.nodes.values():  # attempt 3 (v3's turn) is due by now, say
        node.responder.attempt_limit = lambda seq, now: 4
    v3 = net.nodes["v3"]
    v3.view.poll()
    txid = v3.round.run(0, 3, v3.view.coin, net.source.latest(), False)
    tx = Transaction.from_string(net.chain.mempool[txid])
    payload = tx.vout[0].script_pubkey.data
    assert payload[-32:] == old.commit_state_id
    assert net.nodes["v3"].store.bound_qc(net.nodes["v3"].view.coin.outpoint) == old.to_json()


def test_a_binding_for_a_coin_the_initiator_left_is_not_adopted(net: Net) -> None:
    """Right after a checkpoint, peers whose PoW node has not seen it yet refuse the
    next proposal and name the QC they are bound to for the coin *they* see (the one
    just spent). The initiator must not adopt it for the new coin: every appliance
    refuses a round that is not above the coin's own (seen in a 100-validator bench,
    where the whole attempt was lost to it); it waits for the peers to catch up."""
    q10 = net.qc(10)
    v0 = net.nodes["v0"]
    v0.view.poll()
    genesis = v0.view.coin
    v0.round.run(0, 0, genesis, q10, False)
    net.chain.mine()
    bound = [v for v in ("v2", "v3") if net.nodes[v].store.bound_qc(genesis.outpoint)]
    stale = ["v0", bound[0]]  # both signed round 10 on the genesis coin
    polls = {v: net.nodes[v].view.poll for v in stale}
    for v in stale:  # their PoW node lags a block: they still see the genesis coin
        net.nodes[v].view.poll = lambda: None
    q11 = net.qc(11)
    v1 = net.nodes["v1"]  # checkpoint 1, attempt 0 is v1's
    v1.view.poll()
    assert v1.view.coin.outpoint != genesis.outpoint
    with pytest.raises(CheckpointFailed) as failed:
        v1.round.run(1, 0, v1.view.coin, q11, False)
    assert str(failed.value).startswith("1 of 3 signatures"), failed.value  # v3 alone
    refusals = [d for v in net.appliances for d in net.appliances[v].journal.decisions()
                if d["decision"] == "refused"]
    assert refusals == []  # no appliance was asked for round 10 on the new coin
    for v, poll in polls.items():  # caught up: the next attempt of v1's completes
        net.nodes[v].view.poll = poll
    for node in net.nodes.values():
        node.responder.attempt_limit = lambda seq, now: 5
    txid = v1.round.run(1, 4, v1.view.coin, q11, False)
    tx = Transaction.from_string(net.chain.mempool[txid])
    assert tx.vout[0].script_pubkey.data[-32:] == q11.commit_state_id


def test_a_bound_node_proposes_its_bound_qc(net: Net) -> None:
    old = net.qc(10)
    assert net.nodes["v1"].responder.on_propose(msg("v0", net.proposal("v0", old)))[0] \
        == "signatures"
    net.qc(30)
    v1 = net.nodes["v1"]
    v1.view.poll()
    txid = v1.round.run(0, 1, v1.view.coin, net.source.latest(), False)
    payload = Transaction.from_string(net.chain.mempool[txid]).vout[0].script_pubkey.data
    assert payload[-32:] == old.commit_state_id


def test_a_restarted_node_accepts_the_others_attempts_and_catches_up(net: Net) -> None:
    """A node that restarts counts attempts from its restart; it must still accept the
    attempts the others have reached (bounded by the coin's block time), and count
    from theirs once it has signed one."""
    net.qc(10)
    v1 = net.nodes["v1"]
    v1.view.poll()
    coin_time = v1.view.coin_time
    now = coin_time + 6 * 5.0 + 1  # six timeouts after the coin confirmed
    v1.due_since[0] = now  # just restarted: its own count says attempt 0
    assert v1.attempt_limit(0, now) == 7
    v1.note_attempt(0, 6, now)
    assert v1.attempt_limit(0, now) == 7 and v1.due_since[0] == now - 30.0


@pytest.mark.parametrize("forgotten", [False, True], ids=["kept", "node-forgot"])
def test_a_two_two_split_is_released_and_the_next_round_completes(
    net: Net, forgotten: bool
) -> None:
    """v1, v2 signed QC 10 for the coin, v0, v3 signed QC 30 (stop/restart, or a lying
    initiator): with k = 3 neither gets a third signature under the per-coin rule. The
    refusing peers return their bound signatures; the initiator proposes the payload two
    (n - k + 1) validators signed, with those signatures as evidence, and every appliance
    bound to the other payload releases it and signs."""
    for node in net.nodes.values():
        node.responder.attempt_limit = lambda seq, now: 4
    old = net.qc(10)
    for vid in ("v1", "v2"):  # attempt 0 is v0's
        assert net.nodes[vid].responder.on_propose(
            msg("v0", net.proposal("v0", old)))[0] == "signatures"
    new = net.qc(30)
    for vid in ("v0", "v3"):  # attempt 1 is v1's (a lying v1, or a stop and restart)
        assert net.nodes[vid].responder.on_propose(
            msg("v1", net.proposal("v1", new, attempt=1)))[0] == "signatures"
    if forgotten:  # v0's and v3's nodes lost what their appliances signed (replies lost)
        for vid in ("v0", "v3"):
            net.nodes[vid].store._db.execute("DELETE FROM signed_qc")
    # Before any release: the bound v2's own QC gets 2 of 3 (its own and v1's); v0 and
    # v3 refuse, naming their binding (a node that forgot it asks its appliance again).
    v2 = net.nodes["v2"]
    v2.view.poll()
    coin = v2.view.coin
    txid = v2.round.run(0, 2, coin, net.source.latest(), False)
    tx = Transaction.from_string(net.chain.mempool[txid])
    assert tx.vout[0].script_pubkey.data[-32:] == new.commit_state_id
    ms = multisig_for(net.records[0])
    assert len(quorum_signers(tx, coin, ms)) == ms.threshold
    keys = {k.validator_id: k.pubkey for k in ms.keys}
    assert set(quorum_signers(tx, coin, ms)) == {keys[v] for v in ("v0", "v2", "v3")}
    # v2 released QC 10's payload with v0's and v3's signatures as evidence (v1 had signed
    # v2's first proposal of this attempt, and a node signs one proposal per attempt).
    rows = net.appliances["v2"].journal._db.execute(
        "SELECT input, evidence FROM released").fetchall()
    assert [r[0] for r in rows] == [str(coin.outpoint)]
    assert json.loads(rows[0][1])["signers"] == sorted(keys[v].sec().hex() for v in ("v0", "v3"))
    assert v2.store.bound_qc(coin.outpoint) == new.to_json()


def test_without_n_minus_k_plus_one_on_another_payload_nothing_is_released(net: Net) -> None:
    """One validator bound elsewhere is no proof: the bound initiator keeps its QC."""
    for node in net.nodes.values():
        node.responder.attempt_limit = lambda seq, now: 4
    old = net.qc(10)
    for vid in ("v1", "v2"):
        assert net.nodes[vid].responder.on_propose(
            msg("v0", net.proposal("v0", old)))[0] == "signatures"
    new = net.qc(30)
    assert net.nodes["v3"].responder.on_propose(
        msg("v1", net.proposal("v1", new, attempt=1)))[0] == "signatures"
    v2 = net.nodes["v2"]
    v2.view.poll()
    txid = v2.round.run(0, 2, v2.view.coin, net.source.latest(), False)
    tx = Transaction.from_string(net.chain.mempool[txid])
    assert tx.vout[0].script_pubkey.data[-32:] == old.commit_state_id  # v0 joined QC 10
    assert net.appliances["v3"].journal._db.execute(
        "SELECT COUNT(*) FROM released").fetchone()[0] == 0


def test_a_one_one_split_with_one_down_is_released_within_a_rotation(net: Net) -> None:
    """v3 down, v0 signed QC 10, v1 QC 30, v2 nothing: no payload has n - k + 1 = 2
    signers. The unbound v2 adopts one and signs it too, which makes two; the next bound
    initiator proposes it again with both signatures, and the other releases."""
    for node in net.nodes.values():
        node.responder.attempt_limit = lambda seq, now: 12
    net.nodes["v3"].responder.appliance = Refusing()  # down, as far as signing goes
    a = net.qc(10)
    assert net.nodes["v0"].responder.on_propose(
        msg("v1", net.proposal("v1", a, attempt=1)))[0] == "signatures"
    b = net.qc(30)
    assert net.nodes["v1"].responder.on_propose(
        msg("v2", net.proposal("v2", b, attempt=2)))[0] == "signatures"
    v2 = net.nodes["v2"]
    v2.view.poll()
    coin = v2.view.coin
    with pytest.raises(CheckpointFailed):  # v1 signed QC 30 in this attempt: one per attempt
        v2.round.run(0, 6, coin, net.source.latest(), False)
    assert v2.store.bound_qc(coin.outpoint) == a.to_json()  # v2 signed what v0 had
    v0 = net.nodes["v0"]
    v0.view.poll()
    txid = v0.round.run(0, 8, coin, net.source.latest(), False)
    tx = Transaction.from_string(net.chain.mempool[txid])
    assert tx.vout[0].script_pubkey.data[-32:] == a.commit_state_id
    assert net.appliances["v1"].journal.released_rows()[0]["input"] == str(coin.outpoint)


def test_a_signature_binds_the_coin_it_spends_even_when_the_view_moved_on(net: Net) -> None:
    """A checkpoint confirmed while this node's appliance was signing the next proposal:
    the binding is for the coin the proposal spends, not for the one the view sees once
    the signature is back. (Bound to the old QC on the new coin, this node would propose
    it there as initiator, where every appliance refuses it: seen once in CI as a lost
    attempt in test_a_binding_for_a_coin_the_initiator_left_is_not_adopted.)"""
    qc = net.qc(10)
    body = net.proposal("v0", qc)
    v1 = net.nodes["v1"]
    coin = v1.view.coin
    moved = Coin(Outpoint("ab" * 32, 1), coin.value, coin.epoch)
    real = v1.responder.appliance.sign

    def sign_while_a_checkpoint_confirms(*args: Any) -> Any:
        reply = real(*args)
        v1.view.coin = moved  # what a concurrent poll does when the block arrives
        return reply

    v1.responder.appliance.sign = sign_while_a_checkpoint_confirms
    assert v1.responder.on_propose(msg("v0", body))[0] == "signatures"
    assert v1.view.store.bound_qc(coin.outpoint) == qc.to_json()
    assert v1.view.store.bound_qc(moved.outpoint) is None
