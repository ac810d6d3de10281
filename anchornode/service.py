"""One validator's online process: follow the coin, propose when due, sign for peers.

Threads: the peer server answers proposals and announcements; the main loop
follows the PoW chain, decides whether a checkpoint is due and, when this node is
the attempt's initiator, runs the signing round and delivers the transaction. The
node checks every proposal itself before its appliance sees it, but the appliance
trusts none of that and checks everything again.
"""

from __future__ import annotations

import logging
import math
import socketserver
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from embit.psbt import PSBT
from embit.transaction import Transaction

from anchornode.appliance_client import ApplianceClient
from anchornode.config import NodeConfig
from anchornode.feewallet import FeeWalletError, select_topup, sign_topups
from anchornode.initiator import CheckpointFailed, deliver
from anchornode.metrics import Metrics
from anchornode.peer_protocol import (
    Authenticator,
    Message,
    PeerError,
    exchange,
    read_frame,
    seal,
    write_frame,
)
from anchornode.pow.follow import CoinFollower, confirmed_height
from anchornode.pow.rpc import PowRpc, RpcError
from anchornode.qcsource import QCSource
from anchornode.schedule import ChainState, attempt_at, due, initiator_index
from appliance.lineage import quorum_signers
from bftanchor.deployment import Deployment
from bftanchor.descriptor import multisig_for
from bftanchor.epoch import EpochRecord, verify_certificate
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.qc import QC, verify_qc
from bftanchor.template import (
    P2WPKH_WITNESS,
    Coin,
    Outpoint,
    build_checkpoint_psbt,
    build_checkpoint_tx,
    estimate_vsize,
    finalize,
    verify_partial_sig,
)

log = logging.getLogger("bft_anchor.node")

LINEAGE_MAX = 32
INCREMENTAL_RATE = 1.0  # sat/vB: BIP125's minimum step between replacements (node default)


@dataclass
class Ladder:
    """Fully signed fee levels for one coin: broadcast the next when the last is stuck."""

    coin: Outpoint
    rungs: list[str]  # raw tx hex, ascending fee
    fees: list[int]
    index: int = 0
    since_height: int = 0

    @property
    def txids(self) -> list[str]:
        return [Transaction.from_string(r).txid().hex() for r in self.rungs]


@dataclass
class PeerView:
    accepted: dict[int, tuple[int, frozenset[str]]] = field(default_factory=dict)


def fee_ladder(base_fee: int, vsize: int, levels: int, factor: float, floor: int = 0) -> list[int]:
    """Ascending fees where each rung could replace the previous under BIP125."""
    fees = [max(base_fee, floor)]
    while len(fees) < levels:
        prev = fees[-1]
        fees.append(max(math.ceil(prev * factor), prev + math.ceil(INCREMENTAL_RATE * vsize) + 1))
    return fees


class NodeService:
    def __init__(
        self,
        cfg: NodeConfig,
        deployment: Deployment,
        bft_secret: bytes,
        appliance: ApplianceClient,
        rpcs: list[PowRpc],
        source: QCSource,
    ) -> None:
        self.cfg = cfg
        self.me = cfg.validator_id
        self.deployment = deployment
        self.secret = bft_secret
        self.appliance = appliance
        self.rpcs = rpcs
        self.source = source
        self.records: dict[int, EpochRecord] = {deployment.epoch0.epoch: deployment.epoch0}
        self.auth = Authenticator(self.records)
        self.metrics = Metrics(self.me)
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.follower: CoinFollower | None = None
        self.coin = deployment.genesis
        self.epochs_with_checkpoint: set[int] = set()
        self.last_checkpoint: tuple[int, float] | None = None
        self.last_round: tuple[int, int] | None = None
        self.due_since: dict[int, float] = {}
        self.last_attempt: dict[int, int] = {}
        self.proposed: set[tuple[int, int]] = set()
        self.view = PeerView()
        self.ladders: dict[Outpoint, Ladder] = {}
        self.pending_since: dict[Outpoint, int] = {}
        self.server: socketserver.ThreadingTCPServer | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(4, len(cfg.peers) + 1))

    # --- the PoW chain ---------------------------------------------------------------

    def _read(self, method: str, *args: Any) -> Any:
        """A read from the first PoW node that answers."""
        errors = []
        for rpc in self.rpcs:
            try:
                return rpc.call(method, *args)
            except RpcError as exc:
                if exc.code is not None:  # the node answered: a real error
                    raise
                errors.append(str(exc))
        raise RpcError("no PoW node answered: " + "; ".join(errors))

    def _reader(self) -> PowRpc:
        for rpc in self.rpcs:
            try:
                rpc.getblockcount()
                return rpc
            except RpcError:
                continue
        raise RpcError("no PoW node answered")

    @property
    def seq(self) -> int:
        return len(self.follower.spends) if self.follower else 0

    def poll_chain(self) -> None:
        rpc = self._reader()
        if self.follower is None or self.follower.rpc is not rpc:
            start = confirmed_height(rpc, self.deployment.genesis.outpoint.txid)
            if start is None:
                return
            self.follower = CoinFollower(rpc, self.deployment.genesis.outpoint, start)
            self.coin = self.deployment.genesis
            self.epochs_with_checkpoint.clear()
        before = len(self.follower.spends)
        new = self.follower.poll()
        if len(self.follower.spends) < before + len(new):  # reorganised: rebuild the view
            self.coin = self.deployment.genesis
            self.epochs_with_checkpoint.clear()
            new = list(self.follower.spends)
        for spend in new:
            self._on_confirmed(spend)

    def _on_confirmed(self, spend: Any) -> None:
        coin = self.coin
        ms = multisig_for(self.records[coin.epoch])
        dest_epoch = coin.epoch
        nxt = self.records.get(coin.epoch + 1)
        if nxt is not None and multisig_for(nxt).script_pubkey == spend.tx.vout[1].script_pubkey:
            dest_epoch = coin.epoch + 1
        try:
            payload = Payload.from_script(
                spend.tx.vout[0].script_pubkey.data, self.deployment.magic
            )
            self.epochs_with_checkpoint.add(payload.epoch)
            self.last_round = (payload.epoch, payload.round)
            what = f"epoch {payload.epoch} round {payload.round}"
        except CheckpointError:
            what = "unreadable payload"
        key_ids = {k.pubkey: k.validator_id for k in ms.keys}
        signers = [key_ids[p] for p in quorum_signers(spend.tx, coin, ms)]
        self.coin = Coin(Outpoint(spend.txid, 1), spend.tx.vout[1].value, dest_epoch)
        self.last_checkpoint = (spend.height, float(spend.block_time))
        self.metrics.confirmed(spend.height, time.time(), spend.txid, signers)
        self.ladders.pop(spend.spent, None)
        log.info(
            "confirmed: %s txid %s at height %d, signed by %s%s",
            what,
            spend.txid,
            spend.height,
            ",".join(signers),
            f" (handover to epoch {dest_epoch})" if dest_epoch != coin.epoch else "",
        )

    def refresh_records(self) -> None:
        try:
            offered = sorted(self.source.records(), key=lambda r: r.epoch)
        except Exception as exc:  # the BFT node being down must not stop the loop
            log.warning("cannot read epoch records from the QC source: %s", exc)
            return
        for r in offered:
            if r.epoch in self.records or r.epoch - 1 not in self.records:
                continue
            try:
                verify_certificate(r, self.records[r.epoch - 1])
            except CheckpointError as exc:
                log.warning("epoch %d record from the QC source is not certified: %s", r.epoch, exc)
                continue
            with self.lock:
                self.records[r.epoch] = r
            log.info("holding certified record for epoch %d", r.epoch)

    def coin_spent_in_mempool(self) -> bool:
        op = self.coin.outpoint
        try:
            return self._read("gettxout", op.txid, op.vout, True) is None
        except RpcError:
            return False

    # --- the main loop ---------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.refresh_records()
        with self.lock:
            self.poll_chain()
            tip = int(self._read("getblockcount"))
            if self.coin_spent_in_mempool():
                self._pending(tip)
                return
            coin, seq = self.coin, self.seq
        try:
            qc = self.source.latest(epoch=coin.epoch)
        except Exception as exc:
            log.warning("cannot read QCs: %s", exc)
            return
        if qc is None or coin.epoch not in self.records:
            return
        record = self.records[coin.epoch]
        last_h = self.last_checkpoint[0] if self.last_checkpoint else None
        last_t = self.last_checkpoint[1] if self.last_checkpoint else None
        chain = ChainState(
            tip, coin.epoch, True, last_h, last_t, coin.epoch in self.epochs_with_checkpoint
        )
        d = due(
            self.cfg.schedule,
            chain,
            qc.epoch,
            qc.round,
            record.end_round,
            coin.epoch + 1 in self.records,
            now,
            self.deployment.handover_window,
        )
        if d is None:
            return
        since = self.due_since.setdefault(seq, now)
        attempt = attempt_at(since, now, self.cfg.schedule.initiator_timeout)
        previous = self.last_attempt.get(seq, 0)
        if attempt > previous:
            self.metrics.inc("failovers", attempt - previous)
            log.warning(
                "failover: checkpoint %d attempt %d had no result in %.0f s; attempt %d",
                seq,
                previous,
                self.cfg.schedule.initiator_timeout,
                attempt,
            )
        self.last_attempt[seq] = attempt
        initiator = record.validators[initiator_index(seq, attempt, record.n)].id
        if initiator != self.me or (seq, attempt) in self.proposed:
            return
        self.proposed.add((seq, attempt))
        if d.handover:
            # The handover carries a QC of the window, never one past the epoch's end.
            qc = self.source.latest(epoch=coin.epoch, max_round=record.end_round) or qc
        log.info(
            "checkpoint %d due (%s); initiating attempt %d with epoch %d round %d",
            seq,
            d.reason,
            attempt,
            qc.epoch,
            qc.round,
        )
        try:
            self.run_round(seq, attempt, coin, qc, d.handover)
        except (CheckpointFailed, CheckpointError, RpcError) as exc:
            log.warning("checkpoint %d attempt %d failed: %s", seq, attempt, exc)

    def _pending(self, tip: int) -> None:
        """The coin is spent in the mempool: wait, or move up the fee ladder when stuck."""
        op = self.coin.outpoint
        since = self.pending_since.setdefault(op, tip)
        ladder = self.ladders.get(op)
        if ladder is None:
            return
        if tip - max(since, ladder.since_height) < self.cfg.schedule.stuck_after:
            return
        if ladder.index + 1 >= len(ladder.rungs):
            return
        ladder.index += 1
        ladder.since_height = tip
        tx = Transaction.from_string(ladder.rungs[ladder.index])
        try:
            deliver(tx, self.rpcs)
            log.warning(
                "stuck for %d blocks: replaced with fee level %d (%d sat), txid %s",
                self.cfg.schedule.stuck_after,
                ladder.index,
                ladder.fees[ladder.index],
                tx.txid().hex(),
            )
        except CheckpointFailed as exc:
            log.warning("fee bump failed: %s", exc)

    def run(self) -> None:
        self.start_server()
        log.info("node %s running; peers %s", self.me, ", ".join(p.id for p in self.cfg.peers))
        while not self.stop_event.is_set():
            try:
                self.tick()
            except RpcError as exc:
                log.warning("PoW node trouble: %s", exc)
            except Exception:
                log.exception("unexpected error in the main loop")
            self.stop_event.wait(self.cfg.poll_interval)
        self.shutdown()

    def shutdown(self) -> None:
        self.stop_event.set()
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the initiator -----------------------------------------------------------------

    def fee_wallet(self) -> PowRpc | None:
        if not self.cfg.topup_wallet or not self.rpcs:
            return None
        return self.rpcs[0].wallet(self.cfg.topup_wallet)

    def build_ladder(self, coin: Coin, qc: QC, handover: bool, floor: int = 0) -> list[PSBT]:
        source = multisig_for(self.records[coin.epoch])
        dest = multisig_for(self.records[coin.epoch + 1]) if handover else source
        payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=self.deployment.magic)
        rate = self.cfg.fees.rate(self.rpcs[0] if self.rpcs else None)
        topup = None
        wallet = self.fee_wallet()
        if wallet is not None and coin.value < self.cfg.topup_below:
            worst = math.ceil(
                self.cfg.fees.max_rate * 1000 * self.cfg.ladder_factor**self.cfg.ladder
            )
            topup = select_topup(wallet, self.cfg.topup_amount, worst)
            log.info(
                "coin holds %d sat, below %d: topping up %d sat from fee wallet %s",
                coin.value,
                self.cfg.topup_below,
                self.cfg.topup_amount,
                self.cfg.topup_wallet,
            )
        extra = P2WPKH_WITNESS * (len(topup.inputs) if topup else 0)
        vsize = estimate_vsize(build_checkpoint_tx(coin, payload, dest, 1, topup), source, extra)
        fees = fee_ladder(
            math.ceil(rate * vsize), vsize, self.cfg.ladder, self.cfg.ladder_factor, floor
        )
        return [build_checkpoint_psbt(coin, source, payload, dest, f, topup=topup) for f in fees]

    def run_round(self, seq: int, attempt: int, coin: Coin, qc: QC, handover: bool) -> str:
        t0 = time.monotonic()
        psbts = self.build_ladder(coin, qc, handover)
        source = multisig_for(self.records[coin.epoch])
        recs = [
            self.records[e].to_json()
            for e in sorted({coin.epoch, coin.epoch + 1})
            if e in self.records
        ]
        lineage = [s.raw for s in (self.follower.spends if self.follower else [])][-LINEAGE_MAX:]
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
            got = 0
            for i, b64 in enumerate(signed[: len(collected)]):
                try:
                    theirs = PSBT.from_string(b64)
                    if theirs.tx.txid() != collected[i].tx.txid():
                        raise CheckpointFailed("a different transaction")
                    sig = theirs.inputs[0].partial_sigs[keys[vid]]
                    verify_partial_sig(collected[i], 0, source, keys[vid], sig)
                except Exception as exc:
                    log.warning(
                        "validator %s returned a bad signature for rung %d: %s", vid, i, exc
                    )
                    self.metrics.refusal("bad signature")
                    return
                collected[i].inputs[0].partial_sigs[keys[vid]] = sig
                got += 1
            if got:
                signed_by.append(vid)

        take(self.me, self._sign_locally(body))
        deadline = t0 + self.cfg.schedule.initiator_timeout * 0.8
        k = source.threshold
        pending = {self._pool.submit(self._ask_peer, p, body, deadline): p for p in self.cfg.peers}
        # Stop as soon as k have signed: a slow or silent peer must not delay the round
        # (it catches up later from the lineage the next proposal carries).
        while pending and len(signed_by) < k:
            done, _ = wait(
                pending, timeout=max(0.05, deadline - time.monotonic()), return_when=FIRST_COMPLETED
            )
            if not done:
                break
            for fut in done:
                peer = pending.pop(fut)
                try:
                    reply = fut.result()
                except Exception as exc:
                    log.warning("peer %s: no answer: %s", peer.id, exc)
                    continue
                if reply is not None:
                    take(peer.id, reply)
        if len(signed_by) < k:
            raise CheckpointFailed(f"{len(signed_by)} of {k} signatures ({', '.join(signed_by)})")
        rungs, fees = [], []
        wallet = self.fee_wallet() if len(collected[0].inputs) > 1 else None
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
        tx = Transaction.from_string(rungs[0])
        reached = deliver(tx, self.rpcs)
        txid = tx.txid().hex()
        tip = int(self._read("getblockcount"))
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
        for p in self.cfg.peers:
            self._pool.submit(self._announce, p, announce)
        return txid

    def _sign_locally(self, body: dict[str, Any]) -> list[str]:
        out = []
        for b64 in body["psbts"]:
            reply = self.appliance.sign(b64, body["qc"], body["records"], body["lineage"])
            if not reply.get("signed"):
                reasons = reply.get("reasons") or ["refused"]
                for r in reasons:
                    self.metrics.refusal(r)
                log.warning("own appliance refused: %s", "; ".join(reasons))
                break
            out.append(reply["psbt"])
        return out

    def _ask_peer(self, peer: Any, body: dict[str, Any], deadline: float) -> list[str] | None:
        epoch = min(int(e["epoch"]) for e in body["records"])
        data = seal("propose", self.me, epoch, body, self.secret)
        timeout = max(0.5, deadline - time.monotonic())
        try:
            msg = self.auth.open(exchange(peer.host, peer.port, data, timeout))
        except PeerError as exc:
            log.warning("peer %s: %s", peer.id, exc)
            return None
        if msg.sender != peer.id:
            log.warning("peer %s answered as %s: dropped", peer.id, msg.sender)
            return None
        if msg.type == "signatures":
            return list(msg.body.get("psbts") or [])
        reasons = msg.body.get("reasons") or [msg.type]
        for r in reasons:
            self.metrics.refusal(str(r))
        log.warning("validator %s refused: %s", peer.id, "; ".join(map(str, reasons)))
        return None

    def _announce(self, peer: Any, body: dict[str, Any]) -> None:
        try:
            epoch = self.coin.epoch
            exchange(
                peer.host, peer.port, seal("broadcast", self.me, epoch, body, self.secret), 5.0
            )
        except PeerError as exc:
            log.info("announce to %s failed: %s", peer.id, exc)

    # --- the peer side -----------------------------------------------------------------

    def handle(self, raw: bytes) -> bytes:
        try:
            msg = self.auth.open(raw)
        except PeerError as exc:
            log.warning("dropped peer message: %s", exc)
            self.metrics.refusal("unauthenticated message")
            return seal("error", self.me, self.coin.epoch, {"reasons": [str(exc)]}, self.secret)
        if msg.type == "propose":
            reply_type, body = self.on_propose(msg)
        elif msg.type == "broadcast":
            reply_type, body = self.on_broadcast(msg)
        elif msg.type == "ping":
            reply_type, body = "pong", {"seq": self.seq}
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
        with self.lock:
            try:
                self.poll_chain()
            except RpcError as exc:
                return [], [f"cannot check the chain: {exc}"]
            coin, my_seq = self.coin, self.seq
            record = self.records.get(coin.epoch)
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
            payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=self.deployment.magic)
            allowed = {multisig_for(record).script_pubkey}
            if coin.epoch + 1 in self.records:
                allowed.add(multisig_for(self.records[coin.epoch + 1]).script_pubkey)
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
            prior = self.view.accepted.get(seq)
            if prior is not None:
                if attempt < prior[0]:
                    reasons.append(f"attempt {attempt} is superseded by attempt {prior[0]}")
                elif attempt == prior[0] and txids != prior[1]:
                    reasons.append(f"a different proposal for attempt {attempt} was signed")
            if reasons:
                return [], sorted(set(reasons))
            self.view.accepted[seq] = (attempt, txids)
        return psbts, []

    def on_propose(self, msg: Message) -> tuple[str, dict[str, Any]]:
        psbts, reasons = self.precheck(msg)
        if reasons:
            for r in reasons:
                self.metrics.refusal(r)
            log.warning("refused proposal from %s: %s", msg.sender, "; ".join(reasons))
            return "refuse", {"reasons": reasons}
        signed = self._sign_locally(dict(msg.body, psbts=psbts))
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
        with self.lock:
            op = self.coin.outpoint
            if not txs or any(Outpoint(t.vin[0].txid.hex(), t.vin[0].vout) != op for t in txs):
                return "error", {"reasons": ["announced transactions do not spend the coin"]}
            ms = multisig_for(self.records[self.coin.epoch])
            if any(len(quorum_signers(t, self.coin, ms)) < ms.threshold for t in txs):
                return "error", {"reasons": ["announced transactions are not fully signed"]}
            tip = int(self._read("getblockcount"))
            self.ladders.setdefault(op, Ladder(op, rungs, fees, int(b.get("index", 0)), tip))
        try:
            deliver(txs[int(b.get("index", 0))], self.rpcs)
        except CheckpointFailed as exc:
            log.info("relay of announced checkpoint failed: %s", exc)
        log.info("announced by %s: txid %s", msg.sender, b.get("txid"))
        return "pong", {"seq": self.seq}

    def start_server(self) -> None:
        service = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(max(5.0, service.cfg.schedule.initiator_timeout))
                try:
                    raw = read_frame(sock)
                    write_frame(sock, service.handle(raw))
                except (PeerError, OSError) as exc:
                    log.info("peer connection from %s: %s", self.client_address[0], exc)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(self.cfg.listen, Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "validator": self.me,
                "coin": str(self.coin.outpoint),
                "coin_epoch": self.coin.epoch,
                "coin_value": self.coin.value,
                "checkpoints": self.seq,
                "last_checkpoint_height": self.last_checkpoint[0] if self.last_checkpoint else None,
                "epochs_held": sorted(self.records),
            }
