"""The peer side of a round: check a proposal, pass it to the appliance, answer.

The node checks every proposal itself (the initiator's turn, the coin it sees on
chain, the QC, the payload, where the coin goes, one proposal per attempt) before
its appliance sees it; the appliance trusts none of that and checks everything
again. Announced ladders are kept and relayed to this node's PoW nodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from embit.psbt import PSBT
from embit.transaction import Transaction

from anchornode.appliance_client import ApplianceClient
from anchornode.chainview import ChainView
from anchornode.delivery import CheckpointFailed, deliver
from anchornode.ladder import Ladder
from anchornode.metrics import Metrics
from anchornode.peer_protocol import Authenticator, Message, PeerError, seal
from anchornode.pow.rpc import RpcError
from anchornode.round import sign_locally
from anchornode.schedule import initiator_index
from appliance.lineage import quorum_signers
from bftanchor.descriptor import multisig_for
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.qc import QC, verify_qc
from bftanchor.template import Outpoint

log = logging.getLogger("bft_anchor.node")


@dataclass
class PeerView:
    """Per checkpoint seq: the attempt this node signed for and the txids it accepted."""

    accepted: dict[int, tuple[int, frozenset[str]]] = field(default_factory=dict)


class PeerResponder:
    def __init__(
        self,
        me: str,
        secret: bytes,
        view: ChainView,
        appliance: ApplianceClient,
        metrics: Metrics,
        auth: Authenticator,
        ladders: dict[Outpoint, Ladder],
    ) -> None:
        self.me = me
        self.secret = secret
        self.view = view
        self.appliance = appliance
        self.metrics = metrics
        self.auth = auth
        self.ladders = ladders
        self.accepted = PeerView()

    def handle(self, raw: bytes) -> bytes:
        """One sealed request in, one sealed answer out."""
        try:
            msg = self.auth.open(raw)
        except PeerError as exc:
            log.warning("dropped peer message: %s", exc)
            self.metrics.refusal("unauthenticated message")
            epoch = self.view.coin.epoch
            return seal("error", self.me, epoch, {"reasons": [str(exc)]}, self.secret)
        if msg.type == "propose":
            reply_type, body = self.on_propose(msg)
        elif msg.type == "broadcast":
            reply_type, body = self.on_broadcast(msg)
        elif msg.type == "ping":
            reply_type, body = "pong", {"seq": self.view.seq}
        else:
            reply_type, body = "error", {"reasons": [f"unexpected {msg.type}"]}
        return seal(reply_type, self.me, msg.epoch, body, self.secret)

    def precheck(self, msg: Message) -> tuple[list[str], list[str]]:
        """What this node checks before its appliance sees a proposal: (psbts, reasons)."""
        b = msg.body
        try:
            seq, attempt = int(b["seq"]), int(b["attempt"])
            psbts = [str(p) for p in b["psbts"]]
            qc = QC.from_json(b["qc"])
        except (KeyError, TypeError, ValueError, CheckpointError) as exc:
            return [], [f"malformed proposal: {exc}"]
        view = self.view
        with view.lock:
            try:
                view.poll()
            except RpcError as exc:
                return [], [f"cannot check the chain: {exc}"]
            coin, my_seq = view.coin, view.seq
            record = view.records.get(coin.epoch)
            if seq != my_seq:
                return [], [f"proposal for checkpoint {seq}, this node sees {my_seq}"]
            if record is None:
                return [], [f"no record for the coin's epoch {coin.epoch}"]
            expected = record.validators[initiator_index(seq, attempt, record.n)].id
            if msg.sender != expected:
                return [], [
                    f"{msg.sender} is not the initiator of attempt {attempt} (expected {expected})"
                ]
            reasons: list[str] = []
            if qc.epoch != coin.epoch:
                reasons.append(f"QC is for epoch {qc.epoch}, the coin belongs to {coin.epoch}")
            else:
                try:
                    verify_qc(qc, record)
                except CheckpointError as exc:
                    reasons.append(f"QC does not verify: {type(exc).__name__}: {exc}")
            magic = view.deployment.magic
            payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=magic)
            allowed = {multisig_for(record).script_pubkey}
            if coin.epoch + 1 in view.records:
                allowed.add(multisig_for(view.records[coin.epoch + 1]).script_pubkey)
            parsed = []
            for b64 in psbts:
                try:
                    p = PSBT.from_string(b64)
                except Exception as exc:
                    reasons.append(f"malformed PSBT: {exc}")
                    break
                tx = p.tx
                if Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout) != coin.outpoint:
                    reasons.append("the PSBT does not spend the coin this node sees")
                if tx.vout[0].script_pubkey.data != payload.script():
                    reasons.append("output 0 is not the QC's payload")
                if len(tx.vout) < 2 or tx.vout[1].script_pubkey not in allowed:
                    reasons.append("output 1 pays the coin elsewhere")
                parsed.append(tx.txid().hex())
            txids = frozenset(parsed)
            prior = self.accepted.accepted.get(seq)
            if prior is not None:
                if attempt < prior[0]:
                    reasons.append(f"attempt {attempt} is superseded by attempt {prior[0]}")
                elif attempt == prior[0] and txids != prior[1]:
                    reasons.append(f"a different proposal for attempt {attempt} was signed")
            if reasons:
                return [], sorted(set(reasons))
            self.accepted.accepted[seq] = (attempt, txids)
        return psbts, []

    def on_propose(self, msg: Message) -> tuple[str, dict[str, Any]]:
        psbts, reasons = self.precheck(msg)
        if reasons:
            for r in reasons:
                self.metrics.refusal(r)
            log.warning("refused proposal from %s: %s", msg.sender, "; ".join(reasons))
            return "refuse", {"reasons": reasons}
        signed = sign_locally(self.appliance, self.metrics, dict(msg.body, psbts=psbts))
        if not signed:
            return "refuse", {"reasons": ["the appliance refused (see its journal)"]}
        log.info(
            "signed proposal from %s: checkpoint %s attempt %s (%d fee levels)",
            msg.sender,
            msg.body.get("seq"),
            msg.body.get("attempt"),
            len(signed),
        )
        return "signatures", {"psbts": signed}

    def on_broadcast(self, msg: Message) -> tuple[str, dict[str, Any]]:
        b = msg.body
        try:
            rungs = [str(r) for r in b["rungs"]]
            fees = [int(f) for f in b["fees"]]
            txs = [Transaction.from_string(r) for r in rungs]
        except (KeyError, TypeError, ValueError) as exc:
            return "error", {"reasons": [f"malformed broadcast: {exc}"]}
        view = self.view
        with view.lock:
            op = view.coin.outpoint
            if not txs or any(Outpoint(t.vin[0].txid.hex(), t.vin[0].vout) != op for t in txs):
                return "error", {"reasons": ["announced transactions do not spend the coin"]}
            ms = multisig_for(view.records[view.coin.epoch])
            if any(len(quorum_signers(t, view.coin, ms)) < ms.threshold for t in txs):
                return "error", {"reasons": ["announced transactions are not fully signed"]}
            tip = view.tip()
            self.ladders.setdefault(op, Ladder(op, rungs, fees, int(b.get("index", 0)), tip))
        try:
            deliver(txs[int(b.get("index", 0))], view.rpcs)
        except CheckpointFailed as exc:
            log.info("relay of announced checkpoint failed: %s", exc)
        log.info("announced by %s: txid %s", msg.sender, b.get("txid"))
        return "pong", {"seq": view.seq}
