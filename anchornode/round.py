"""The initiator's signing round: propose a fee ladder, collect k signatures, deliver.

The initiator asks every peer in parallel, signs on its own appliance once k - 1
peers have, and stops as soon as k valid signatures are in (a slow or silent peer
catches up later from the lineage the next proposal carries).

An appliance never signs two payloads for one coin, so a node proposes the QC its
appliance is already bound to for the coin (CheckpointStore.bound_qc), and an
initiator not yet bound that is refused by peers bound to another QC proposes that
one instead, once, in the same attempt. Without this, a stall that left some
appliances signed for one QC and others for a newer one would stop the network
for good. When validators are split between payloads (bound ones included: two
signed one payload, two another, k = 3 of 4), a refusing peer returns its
appliance's signature on its bound transaction; once n - k + 1 validators are
seen signed on one payload other than the proposed one, the initiator proposes
that payload instead, once, carrying those signatures in the lineage: they prove
to every appliance bound elsewhere that its payload can never complete, so it may
release it (docs/protocol.md, "The journal"). Each returned signature is checked
against the epoch's key before it is kept; then every rung is finalized, the lowest
is delivered to every PoW node and the whole ladder is announced to the peers.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from embit.ec import PublicKey
from embit.psbt import PSBT
from embit.transaction import Transaction

from anchornode.appliance_client import ApplianceClient
from anchornode.chainview import ChainView
from anchornode.config import NodeConfig, PeerConfig
from anchornode.delivery import CheckpointFailed, deliver
from anchornode.feewallet import FeeWalletError, sign_topups
from anchornode.ladder import Ladder, build_ladder, fee_wallet
from anchornode.metrics import Metrics
from anchornode.peer_protocol import Authenticator, PeerError, exchange, seal
from bftanchor.descriptor import EpochMultisig, multisig_for
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.psbtread import read_psbt
from bftanchor.qc import QC, verify_qc
from bftanchor.template import (
    Coin,
    Outpoint,
    finalize,
    get_signature,
    partial_checkpoint,
    put_signature,
    verify_partial_sig,
)

log = logging.getLogger("bft_anchor.node")

LINEAGE_MAX = 32
RECORDS_BACK = 15  # epochs before the coin's whose records a proposal carries

# How a sealed message reaches a peer and its answer comes back (TCP by default).
PeerSend = Callable[[PeerConfig, bytes, float], bytes]


class Release(Exception):
    """n - k + 1 validators are bound to another payload: propose its QC with evidence."""

    def __init__(self, qc: QC, evidence: list[str], signers: list[str]) -> None:
        super().__init__(f"release to epoch {qc.epoch} round {qc.round}")
        self.qc = qc
        self.evidence = evidence
        self.signers = signers


class Adopt(Exception):
    """Peers are bound to another QC for this coin, and this node is not: propose it."""

    def __init__(self, qc: QC) -> None:
        super().__init__(f"adopt epoch {qc.epoch} round {qc.round}")
        self.qc = qc


def tcp_send(peer: PeerConfig, data: bytes, timeout: float) -> bytes:
    return exchange(peer.host, peer.port, data, timeout)


# The journal's refusal when the appliance already signed another payload on the coin.
BOUND_ELSEWHERE = re.compile(
    r"coin (\S+) already has a checkpoint with another payload \(epoch (\d+) round (\d+)"
)


def sign_locally(
    appliance: ApplianceClient,
    metrics: Metrics,
    body: dict[str, Any],
    refused: list[str] | None = None,
) -> list[str]:
    """The own appliance's signatures on every rung it accepts, lowest first (the
    reasons of a refusal are added to `refused`)."""
    out = []
    for b64 in body["psbts"]:
        reply = appliance.sign(b64, body["qc"], body["records"], body["lineage"])
        if not reply.signed or reply.psbt is None:
            for r in reply.reasons:
                metrics.refusal(r)
            log.warning("own appliance refused: %s", "; ".join(reply.reasons))
            if refused is not None:
                refused.extend(reply.reasons)
            break
        out.append(reply.psbt)
    return out


def add_signatures(
    collected: list[PSBT], source: EpochMultisig, pub: PublicKey, signed: list[str]
) -> int:
    """Check one validator's signed PSBTs against the rungs (same transaction, a valid
    SIGHASH_ALL signature by `pub`) and add the signatures; all or none. Returns how many
    rungs it signed (it may stop early: a refusal of a higher fee is its right)."""
    sigs = []
    for i, b64 in enumerate(signed[: len(collected)]):
        theirs = read_psbt(b64)
        if theirs.tx.txid() != collected[i].tx.txid():
            raise CheckpointFailed(f"rung {i}: a different transaction")
        sig = get_signature(theirs, 0, source, pub)
        if sig is None:
            raise CheckpointFailed(f"rung {i}: no signature by its key")
        verify_partial_sig(collected[i], 0, source, pub, sig)
        sigs.append(sig)
    if not sigs:
        raise CheckpointFailed("no signature")
    for psbt, sig in zip(collected, sigs, strict=False):
        put_signature(psbt, 0, source, pub, sig)
    return len(sigs)


@dataclass(eq=False)
class NodeParts:
    """The node's parts both sides of a round work with: SigningRound (initiator) and
    PeerResponder (peer) are built from one NodeParts by NodeService."""

    me: str
    secret: bytes = field(repr=False)
    view: ChainView
    appliance: ApplianceClient
    metrics: Metrics
    auth: Authenticator
    ladders: dict[Outpoint, Ladder]


class SigningRound(NodeParts):
    """Runs rounds for one node as initiator; holds what they share."""

    def __init__(
        self,
        cfg: NodeConfig,
        parts: NodeParts,
        pool: ThreadPoolExecutor,
        send: PeerSend = tcp_send,
    ) -> None:
        super().__init__(**vars(parts))
        self.cfg = cfg
        self.pool = pool
        self.send = send
        self._ladder: tuple[Any, list[PSBT]] | None = None  # this attempt's, by QC

    def run(self, seq: int, attempt: int, coin: Coin, qc: QC, handover: bool) -> str:
        """One attempt at checkpoint `seq`; the txid delivered, or CheckpointFailed."""
        t0 = time.monotonic()
        bound = self.view.store.bound_qc(coin.outpoint)
        if bound is not None and bound != qc.to_json():
            qc = QC.from_json(bound)
            handover = self.is_handover(coin, qc)
            log.info("coin %s: proposing epoch %d round %d, the QC this appliance signed for it",
                     coin.outpoint, qc.epoch, qc.round)
        evidence: list[str] = []
        switched: set[str] = set()
        self._ladder = None
        while True:  # at most one adoption and one release per attempt
            try:
                return self._attempt(seq, attempt, coin, qc, handover, t0, evidence,
                                     "adopt" in switched)
            except Adopt as adopt:
                if "adopt" in switched:
                    raise CheckpointFailed(f"no {adopt}") from None
                switched.add("adopt")
                log.warning(
                    "peers are bound to epoch %d round %d for coin %s: proposing that QC",
                    adopt.qc.epoch, adopt.qc.round, coin.outpoint,
                )
                qc = adopt.qc
            except Release as rel:
                if "release" in switched:
                    raise CheckpointFailed(f"no {rel}") from None
                switched.add("release")
                log.warning(
                    "validators are split on coin %s: %s signed epoch %d round %d; proposing "
                    "it with their signatures as evidence for a release",
                    coin.outpoint, ",".join(rel.signers), rel.qc.epoch, rel.qc.round,
                )
                qc, evidence = rel.qc, rel.evidence
            handover = self.is_handover(coin, qc)

    def recover_binding(self, coin: Coin, reasons: list[str]) -> None:
        """This node lost what its appliance signed on coin (a reply lost on the link, a
        state directory replaced), and the appliance says it is bound to (epoch, round):
        ask it to sign a level of that checkpoint again (a fee-ladder level of what it
        signed, or the same transaction answered from its journal) and keep it, so that
        this node can name its binding and show its signature as release evidence."""
        store = self.view.store
        if store.bound_psbt(coin.outpoint) is not None:
            return
        for reason in reasons:
            m = BOUND_ELSEWHERE.search(reason)
            if m is None or m.group(1) != str(coin.outpoint):
                continue
            epoch, rnd = int(m.group(2)), int(m.group(3))
            try:
                qc = self.view.source.latest(epoch, max_round=rnd)
                if qc is None or qc.round != rnd or qc.epoch != coin.epoch:
                    return
                psbts = build_ladder(self.cfg, self.view.records, self.view.deployment.magic,
                                     self.view.rpcs, coin, qc, self.is_handover(coin, qc))
                recs = [self.view.records[e].to_json()
                        for e in sorted({coin.epoch, coin.epoch + 1}) if e in self.view.records]
                reply = self.appliance.sign(psbts[0].to_string(), qc.to_json(), recs, [])
            except Exception as exc:  # best effort: the next refusal tries again
                log.info("coin %s: cannot recover this appliance's binding: %s",
                         coin.outpoint, exc)
                return
            if reply.signed and reply.psbt is not None:
                store.bind_qc(coin.outpoint, qc.to_json(), reply.psbt)
                log.info("coin %s: this appliance is bound to epoch %d round %d (recovered)",
                         coin.outpoint, epoch, rnd)
            return

    def is_handover(self, coin: Coin, qc: QC) -> bool:
        """Whether a checkpoint of this QC hands the coin over (its round is in the window)."""
        record = self.view.records[coin.epoch]
        window = self.view.deployment.handover_window
        return (
            coin.epoch + 1 in self.view.records
            and record.end_round - window < qc.round <= record.end_round
        )

    def _adoptable(self, coin: Coin, offered: dict[str, Any], qc: QC) -> QC | None:
        """The QC most peers said they are bound to, if it verifies and differs from qc."""
        counts: dict[str, int] = {}
        for q in offered.values():
            key = json.dumps(q, sort_keys=True)
            counts[key] = counts.get(key, 0) + 1
        for key, _ in sorted(counts.items(), key=lambda kv: -kv[1]):
            try:
                cand = QC.from_json(json.loads(key))
                if cand.epoch != coin.epoch or cand.to_json() == qc.to_json():
                    continue
                verify_qc(cand, self.view.records[coin.epoch])
                return cand
            except (CheckpointError, KeyError, TypeError, ValueError):
                continue
        return None

    def _release(
        self,
        coin: Coin,
        qc: QC,
        bound: dict[str, tuple[Any, Any]],
        source: EpochMultisig,
        with_current: bool = False,
    ) -> Release | None:
        """A payload other than qc's that n - k + 1 validators proved they signed on this
        coin (their appliances' signatures on their bound transactions), with that evidence.
        With `with_current`, qc's own payload too: proposed again with the evidence, for
        the validators that refused it because they are bound elsewhere.

        Each claim is checked here: the QC verifies, the PSBT spends this coin with that
        QC's payload and carries a valid signature by the validator's own key. Of several
        such payloads, the one most validators signed, then the highest round."""
        record = self.view.records[coin.epoch]
        magic = self.view.deployment.magic
        keys = {k.validator_id: k.pubkey for k in source.keys}
        current = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=magic).script()
        groups: dict[bytes, tuple[QC, dict[str, tuple[PSBT, bytes]]]] = {}
        for vid, (qc_json, b64) in bound.items():
            try:
                cand = QC.from_json(qc_json)
                if cand.epoch != coin.epoch or vid not in keys:
                    continue
                verify_qc(cand, record)
                script = Payload(cand.epoch, cand.round, cand.commit_state_id,
                                 magic=magic).script()
                psbt = read_psbt(b64)
                tx = psbt.tx
                if (Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout) != coin.outpoint
                        or tx.vout[0].script_pubkey.data != script
                        or (script == current and not with_current)):
                    continue
                sig = get_signature(psbt, 0, source, keys[vid])
                if sig is None:
                    continue
                verify_partial_sig(psbt, 0, source, keys[vid], sig)
            except Exception as exc:  # a peer's claim that does not check is ignored
                log.info("validator %s: bound signature not usable as evidence: %s", vid, exc)
                continue
            groups.setdefault(script, (cand, {}))[1][vid] = (psbt, sig)
        need = len(source.keys) - source.threshold + 1
        best = sorted(
            (g for g in groups.values() if len(g[1]) >= need),
            key=lambda g: (len(g[1]), g[0].round),
            reverse=True,
        )
        if not best:
            return None
        cand, members = best[0]
        by_txid: dict[str, tuple[PSBT, dict]] = {}
        for vid, (psbt, sig) in members.items():
            entry = by_txid.setdefault(psbt.tx.txid().hex(), (psbt, {}))
            entry[1][keys[vid]] = sig
        evidence = [
            partial_checkpoint(psbt, source, sigs).serialize().hex()
            for psbt, sigs in by_txid.values()
        ]
        return Release(cand, evidence, sorted(members))

    def _attempt(
        self,
        seq: int,
        attempt: int,
        coin: Coin,
        qc: QC,
        handover: bool,
        t0: float,
        evidence: list[str] | None = None,
        adopted: bool = False,
    ) -> str:
        view, cfg = self.view, self.cfg
        # The same ladder when the same QC is proposed again in this attempt (with release
        # evidence): peers that signed it accept only the same transactions in one attempt.
        key = (coin.outpoint, json.dumps(qc.to_json(), sort_keys=True), handover)
        if self._ladder is not None and self._ladder[0] == key:
            psbts = self._ladder[1]
        else:
            psbts = build_ladder(
                cfg, view.records, view.deployment.magic, view.rpcs, coin, qc, handover
            )
            self._ladder = (key, psbts)
        source = multisig_for(view.records[coin.epoch])
        # Every record an appliance may need to certify its way from an epoch it held
        # before going offline to the coin's (each is certified by its predecessor).
        recs = [
            view.records[e].to_json()
            for e in range(max(0, coin.epoch - RECORDS_BACK), coin.epoch + 2)
            if e in view.records
        ]
        # Release evidence travels in the lineage (partially signed spends of the coin).
        evidence = evidence or []
        lineage = [s.raw for s in view.spends][-(LINEAGE_MAX - len(evidence)):] + evidence
        if len(evidence) >= LINEAGE_MAX:
            lineage = evidence[:LINEAGE_MAX]
        body = {
            "seq": seq,
            "attempt": attempt,
            "psbts": [p.to_string() for p in psbts],
            "qc": qc.to_json(),
            "records": recs,
            "lineage": lineage,
        }
        collected = [PSBT.parse(p.serialize()) for p in psbts]
        signed_by: list[str] = []
        keys = {k.validator_id: k.pubkey for k in source.keys}

        def take(vid: str, signed: list[str]) -> None:
            if vid in signed_by or not signed:
                return
            try:
                add_signatures(collected, source, keys[vid], signed)
            except Exception as exc:
                log.warning("validator %s returned a bad signature: %s", vid, exc)
                self.metrics.refusal("bad signature")
                return
            signed_by.append(vid)
            bound[vid] = (body["qc"], signed[0])  # now bound to this payload: evidence

        deadline = t0 + cfg.schedule.initiator_timeout * 0.8
        k = source.threshold
        offered: dict[str, Any] = {}  # peer -> the QC it said it is bound to for this coin
        bound: dict[str, tuple[Any, Any]] = {}  # validator -> (bound QC, its signed PSBT)
        own_qc, own_psbt = view.store.bound_qc(coin.outpoint), view.store.bound_psbt(
            coin.outpoint)
        if own_qc is not None and own_psbt is not None:
            bound[self.me] = (own_qc, own_psbt)
        pending = {self.pool.submit(self.ask_peer, p, body, deadline, coin.outpoint): p
                   for p in cfg.peers}

        def sign_here() -> None:
            refused: list[str] = []
            signed = sign_locally(self.appliance, self.metrics, body, refused)
            if signed:
                view.store.bind_qc(coin.outpoint, body["qc"], signed[0])
                bound[self.me] = (body["qc"], signed[0])
            else:
                self.recover_binding(coin, refused)
            take(self.me, signed)

        # This node signs once k - 1 peers have (so that, not yet bound, it could still
        # adopt the QC its peers are bound to); stop as soon as k have signed: a slow or
        # silent peer must not delay the round.
        while pending and len(signed_by) < k:
            if len(signed_by) == k - 1 and self.me not in signed_by:
                sign_here()
                continue
            done, _ = wait(
                pending, timeout=max(0.05, deadline - time.monotonic()), return_when=FIRST_COMPLETED
            )
            if not done:
                break
            for fut in done:
                peer = pending.pop(fut)
                try:
                    reply, bound_qc, bound_psbt = fut.result()
                except Exception as exc:
                    log.warning("peer %s: no answer: %s", peer.id, exc)
                    continue
                if reply is not None:
                    take(peer.id, reply)
                elif bound_qc is not None:
                    offered[peer.id] = bound_qc
                    if bound_psbt is not None:
                        bound[peer.id] = (bound_qc, bound_psbt)
        if len(signed_by) == k - 1 and self.me not in signed_by:
            sign_here()
        if len(signed_by) < k and adopted and signed_by and self.me not in signed_by:
            # The QC was adopted from peers bound to it: sign it too, so that its signers
            # can reach n - k + 1 and prove to those bound elsewhere that theirs is dead.
            sign_here()
        if len(signed_by) < k:
            if self.me not in signed_by and view.store.bound_qc(coin.outpoint) is None:
                other = self._adoptable(coin, offered, qc)
                if other is not None:
                    raise Adopt(other)
            release = self._release(coin, qc, bound, source, with_current=not evidence)
            if release is not None:
                raise release
            raise CheckpointFailed(f"{len(signed_by)} of {k} signatures ({', '.join(signed_by)})")
        rungs, fees = [], []
        wallet = fee_wallet(cfg, view.rpcs) if len(collected[0].inputs) > 1 else None
        for p in collected:
            try:
                tx = finalize(sign_topups(wallet, p) if wallet else p, source)
            except (CheckpointError, FeeWalletError) as exc:
                if not rungs:
                    raise CheckpointFailed(f"cannot finalize: {exc}") from exc
                break
            rungs.append(tx.serialize().hex())
            fees.append(
                sum(u.value for u in (i.witness_utxo for i in p.inputs))
                - sum(o.value for o in tx.vout)
            )
        self.metrics.latency(time.monotonic() - t0)
        for raw in rungs:  # kept before delivery: a reorg may drop it later
            view.store.add(raw)
        tx = Transaction.from_string(rungs[0])
        reached = deliver(tx, view.rpcs)
        txid = tx.txid().hex()
        tip = view.tip()
        self.ladders[coin.outpoint] = Ladder(coin.outpoint, rungs, fees, 0, tip)
        self.metrics.inc("checkpoints_made")
        log.info(
            "broadcast: epoch %d round %d txid %s fee %d to %d node(s), signed by %s "
            "(%d fee levels held)",
            qc.epoch,
            qc.round,
            txid,
            fees[0],
            len(reached),
            ",".join(signed_by),
            len(rungs),
        )
        announce = {"seq": seq, "txid": txid, "rungs": rungs, "fees": fees, "index": 0}
        for p in cfg.peers:
            self.pool.submit(self.announce, p, announce)
        return txid

    def ask_peer(
        self, peer: PeerConfig, body: dict[str, Any], deadline: float, coin: Outpoint
    ) -> tuple[list[str] | None, Any, Any]:
        """(the peer's signed PSBTs, None, None), or (None, the QC it says it is bound to
        for this coin, its signed PSBT for it) when it refused or did not answer. A binding
        for another coin (a peer that has not seen the last checkpoint yet names the coin
        it sees) says nothing about this one: proposing its QC here would only be refused."""
        epoch = int(body["qc"]["vote_info"]["epoch"])  # the coin's: this node is a member
        data = seal("propose", self.me, epoch, body, self.secret)
        timeout = max(0.5, deadline - time.monotonic())
        try:
            msg = self.auth.open(self.send(peer, data, timeout))
        except PeerError as exc:
            log.warning("peer %s: %s", peer.id, exc)
            return None, None, None
        if msg.sender != peer.id:
            log.warning("peer %s answered as %s: dropped", peer.id, msg.sender)
            return None, None, None
        if msg.type == "signatures":
            return list(msg.body.get("psbts") or []), None, None
        reasons = msg.body.get("reasons") or [msg.type]
        for r in reasons:
            self.metrics.refusal(str(r))
        log.warning("validator %s refused: %s", peer.id, "; ".join(map(str, reasons)))
        if msg.body.get("bound_coin") != str(coin):
            return None, None, None
        return None, msg.body.get("bound_qc"), msg.body.get("bound_psbt")

    def announce(self, peer: PeerConfig, body: dict[str, Any]) -> None:
        try:
            epoch = self.view.coin.epoch
            self.send(peer, seal("broadcast", self.me, epoch, body, self.secret), 5.0)
        except PeerError as exc:
            log.info("announce to %s failed: %s", peer.id, exc)
