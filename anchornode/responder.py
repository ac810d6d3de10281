"""The peer side of a round: check a proposal, pass it to the appliance, answer.

The node checks every proposal itself (the initiator's turn, the coin it sees on
chain, the QC, the payload, where the coin goes, one proposal per attempt) before
its appliance sees it; the appliance trusts none of that and checks everything
again. Announced ladders are kept and relayed to this node's PoW nodes.

A validator's message may only ever cost the others a bounded delay: a proposal
must carry every field a proposal needs (bounded in number and size), its attempt
may not run ahead of what this node itself would accept by now (`attempt_limit`),
and nothing is recorded from it (the attempt it fixes, its txids) before the
appliance has signed it. Whatever goes wrong inside, the peer gets an error reply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embit.transaction import Transaction

from anchornode.delivery import CheckpointFailed, deliver
from anchornode.ladder import Ladder
from anchornode.listener import RateLimitedLog, short
from anchornode.peer_protocol import Message, PeerError, seal
from anchornode.pow.rpc import RpcError
from anchornode.round import LINEAGE_MAX, RECORDS_BACK, NodeParts, sign_locally
from anchornode.schedule import initiator_index
from appliance.lineage import quorum_signers
from bftanchor.coinpath import paid_epoch
from bftanchor.descriptor import multisig_for
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.psbtread import read_psbt
from bftanchor.qc import QC, verify_qc
from bftanchor.template import Coin, Outpoint

log = logging.getLogger("bft_anchor.node")
stranger_log = RateLimitedLog(log)  # lines about unauthenticated input: rate-limited

MAX_RUNGS = 8  # fee levels one proposal may carry
MAX_RECORDS = RECORDS_BACK + 2  # the coin's epoch, the next, and those before it


@dataclass
class PeerView:
    """Per checkpoint seq: the attempt this node signed for and the txids it accepted."""

    accepted: dict[int, tuple[int, frozenset[str]]] = field(default_factory=dict)


class PeerResponder(NodeParts):
    def __init__(
        self,
        parts: NodeParts,
        attempt_limit: Callable[[int, float], int] | None = None,
        on_signed: Callable[[int, int], None] | None = None,
        rebind: Callable[[Coin, list[str]], None] | None = None,
    ) -> None:
        super().__init__(**vars(parts))
        # Without a limit (a responder on its own): attempts 0 and 1 only.
        self.attempt_limit = attempt_limit or (lambda seq, now: 1)
        self.on_signed = on_signed or (lambda seq, attempt: None)
        # Called with the own appliance's refusal (SigningRound.recover_binding).
        self.rebind = rebind or (lambda coin, reasons: None)
        self.accepted = PeerView()
        self._signing = threading.Lock()  # one proposal at a time reaches the appliance

    def handle(self, raw: bytes) -> bytes:
        """One sealed request in, one sealed answer out."""
        try:
            msg = self.auth.open(raw)
        except PeerError as exc:
            return self.reject(exc, "a peer")
        return self.respond(msg)

    def reject(self, exc: Exception, who: str) -> bytes:
        """The sealed error reply to input that did not authenticate (logged, rate-limited)."""
        stranger_log(logging.WARNING, "dropped peer message from %s: %s", who, short(exc))
        self.metrics.refusal("unauthenticated message")
        return seal("error", self.me, self.view.coin.epoch, {"reasons": [short(exc)]}, self.secret)

    def respond(self, msg: Message) -> bytes:
        """Answer an authenticated message; an internal failure is an error reply too."""
        try:
            if msg.type == "propose":
                reply_type, body = self.on_propose(msg)
            elif msg.type == "broadcast":
                reply_type, body = self.on_broadcast(msg)
            elif msg.type == "ping":
                reply_type, body = "pong", {"seq": self.view.seq}
            else:
                reply_type, body = "error", {"reasons": [f"unexpected {msg.type}"]}
        except Exception as exc:  # a peer's message must never kill the handler silently
            log.exception("error answering %s from %s", msg.type, msg.sender)
            reply_type, body = "error", {"reasons": [f"internal error: {short(exc)}"]}
        return seal(reply_type, self.me, msg.epoch, body, self.secret)

    @staticmethod
    def parse_proposal(b: dict[str, Any]) -> tuple[int, int, list[str], QC]:
        """The fields every proposal must carry, each of the right type and size."""

        def count(key: str) -> int:
            v = b[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{key} must be a non-negative integer")
            return v

        seq, attempt = count("seq"), count("attempt")
        psbts, records, lineage = b["psbts"], b["records"], b["lineage"]
        if not isinstance(psbts, list) or not 1 <= len(psbts) <= MAX_RUNGS:
            raise ValueError(f"psbts must be a list of 1 to {MAX_RUNGS} PSBTs")
        if not all(isinstance(x, str) for x in psbts):
            raise ValueError("psbts must be base64 strings")
        if not isinstance(records, list) or not 1 <= len(records) <= MAX_RECORDS:
            raise ValueError(f"records must be a list of 1 to {MAX_RECORDS} epoch records")
        if not isinstance(lineage, list) or len(lineage) > LINEAGE_MAX:
            raise ValueError(f"lineage must be a list of at most {LINEAGE_MAX} transactions")
        if not isinstance(b["qc"], dict):
            raise ValueError("qc must be an object")
        return seq, attempt, psbts, QC.from_json(b["qc"])

    def precheck(self, msg: Message, now: float | None = None) -> tuple[list[str], list[str]]:
        """What this node checks before its appliance sees a proposal: (psbts, reasons).

        It records nothing: see `on_propose`."""
        psbts, reasons, _ = self._precheck(msg, now)
        return psbts, reasons

    def _precheck(
        self, msg: Message, now: float | None = None
    ) -> tuple[list[str], list[str], Coin | None]:
        """precheck(), and the coin the proposal was checked against (the one it spends)."""
        try:
            seq, attempt, psbts, qc = self.parse_proposal(msg.body)
        except KeyError as exc:
            return [], [f"malformed proposal: lacks {short(exc, 40)}"], None
        except (TypeError, ValueError, CheckpointError) as exc:
            return [], [f"malformed proposal: {short(exc)}"], None
        now = time.time() if now is None else now
        view = self.view
        with view.lock:
            try:
                view.poll()
            except RpcError as exc:
                return [], [f"cannot check the chain: {exc}"], None
            coin, my_seq = view.coin, view.seq
            record = view.records.get(coin.epoch)
            if seq != my_seq:
                return [], [f"proposal for checkpoint {seq}, this node sees {my_seq}"], coin
            if record is None:
                return [], [f"no record for the coin's epoch {coin.epoch}"], coin
            expected = record.validators[initiator_index(seq, attempt, record.n)].id
            if msg.sender != expected:
                return [], [
                    f"{msg.sender} is not the initiator of attempt {attempt} (expected {expected})"
                ], coin
            reasons: list[str] = []
            limit = self.attempt_limit(seq, now)
            if attempt > limit:
                reasons.append(f"attempt {attempt} is ahead of this node's clock (at most {limit})")
            if qc.epoch != coin.epoch:
                reasons.append(f"QC is for epoch {qc.epoch}, the coin belongs to {coin.epoch}")
            else:
                try:
                    verify_qc(qc, record)
                except CheckpointError as exc:
                    reasons.append(f"QC does not verify: {type(exc).__name__}: {exc}")
            magic = view.deployment.magic
            payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=magic)
            parsed = []
            for b64 in psbts:
                try:
                    p = read_psbt(b64)
                    if not p.tx.vin or not p.tx.vout:
                        raise ValueError("no inputs or no outputs")
                except Exception as exc:
                    reasons.append(f"malformed PSBT: {short(exc)}")
                    break
                tx = p.tx
                if Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout) != coin.outpoint:
                    reasons.append("the PSBT does not spend the coin this node sees")
                if tx.vout[0].script_pubkey.data != payload.script():
                    reasons.append("output 0 is not the QC's payload")
                if len(tx.vout) < 2 or (
                    paid_epoch(tx.vout[1].script_pubkey, coin.epoch, view.records) is None
                ):
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
                return [], sorted(set(reasons)), coin
        return psbts, [], coin

    def on_propose(self, msg: Message) -> tuple[str, dict[str, Any]]:
        with self._signing:
            psbts, reasons, coin = self._precheck(msg)
            if reasons or coin is None:
                for r in reasons:
                    self.metrics.refusal(r)
                log.warning(
                    "refused proposal from %s: %s", msg.sender, short("; ".join(reasons), 400)
                )
                return "refuse", self._refusal(reasons)
            refused: list[str] = []
            signed = sign_locally(self.appliance, self.metrics, dict(msg.body, psbts=psbts),
                                  refused)
            # What was signed spends the coin checked above, even if the view has moved on
            # since (a checkpoint confirmed meanwhile): that coin is the one it binds.
            if not signed:
                self.rebind(coin, refused)
                return "refuse", self._refusal(["the appliance refused (see its journal)"])
            self.view.store.bind_qc(coin.outpoint, msg.body["qc"], signed[0])
            # Only what the appliance signed fixes this checkpoint's attempt here.
            txids = frozenset(read_psbt(p).tx.txid().hex() for p in psbts)
            with self.view.lock:
                prior = self.accepted.accepted.get(msg.body["seq"])
                if prior is None or msg.body["attempt"] >= prior[0]:
                    self.accepted.accepted[msg.body["seq"]] = (msg.body["attempt"], txids)
            self.on_signed(msg.body["seq"], msg.body["attempt"])
        log.info(
            "signed proposal from %s: checkpoint %s attempt %s (%d fee levels)",
            msg.sender,
            msg.body.get("seq"),
            msg.body.get("attempt"),
            len(signed),
        )
        return "signatures", {"psbts": signed}

    def _refusal(self, reasons: list[str]) -> dict[str, Any]:
        """A refusal's body; it names the QC this node's appliance is bound to for the
        coin, so that an initiator not yet bound can propose that one (round.py)."""
        body: dict[str, Any] = {"reasons": reasons}
        coin = self.view.coin.outpoint
        bound = self.view.store.bound_qc(coin)
        if bound is not None:
            body["bound_qc"] = bound
            body["bound_coin"] = str(coin)  # the binding is for the coin this node sees
            psbt = self.view.store.bound_psbt(coin)
            if psbt is not None:  # its appliance's signature: evidence for a release
                body["bound_psbt"] = psbt
        return body

    def on_broadcast(self, msg: Message) -> tuple[str, dict[str, Any]]:
        b = msg.body
        try:
            rungs = [str(r) for r in b["rungs"]][:MAX_RUNGS]
            fees = [int(f) for f in b["fees"]][: len(rungs)]
            txs = [Transaction.from_string(r) for r in rungs]
            index = int(b.get("index", 0))
            if len(fees) != len(txs) or not 0 <= index < len(txs):
                raise ValueError("rungs, fees and index do not agree")
        except Exception as exc:  # embit's parse errors are not ValueErrors
            return "error", {"reasons": [f"malformed broadcast: {short(exc)}"]}
        view = self.view
        with view.lock:
            op = view.coin.outpoint
            if not txs or any(Outpoint(t.vin[0].txid.hex(), t.vin[0].vout) != op for t in txs):
                return "error", {"reasons": ["announced transactions do not spend the coin"]}
            ms = multisig_for(view.records[view.coin.epoch])
            if any(
                len(quorum_signers(
                    t, view.coin, ms, view.topup_prevouts(t) if ms.is_taproot else None
                )) < ms.threshold
                for t in txs
            ):
                return "error", {"reasons": ["announced transactions are not fully signed"]}
            for raw in rungs:  # quorum-signed: kept, a reorg may drop it later
                view.store.add(raw)
            tip = view.tip()
            self.ladders.setdefault(op, Ladder(op, rungs, fees, index, tip))
        try:
            deliver(txs[index], view.rpcs)
        except CheckpointFailed as exc:
            log.info("relay of announced checkpoint failed: %s", exc)
        log.info("announced by %s: txid %s", msg.sender, txs[index].txid().hex())
        return "pong", {"seq": view.seq}
