"""One validator's online process: the main loop that ties the node's parts together.

The chain view (chainview.py) follows the coin and the epoch records; the main
loop here asks the schedule whether a checkpoint is due and, when this node is the
attempt's initiator, runs the signing round (round.py, fee ladders in ladder.py);
the peer responder (responder.py, behind peer_server.py) answers other
initiators' proposals and announcements. A stuck checkpoint climbs its ladder here.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from anchornode.appliance_client import ApplianceClient
from anchornode.chainview import ChainView
from anchornode.config import NodeConfig
from anchornode.delivery import CheckpointFailed, deliver
from anchornode.ladder import Ladder
from anchornode.metrics import Metrics
from anchornode.peer_protocol import Authenticator, ReplayCache
from anchornode.peer_server import PeerServer
from anchornode.pow.rpc import PowRpc, RpcError
from anchornode.qcsource import QCSource
from anchornode.responder import PeerResponder
from anchornode.round import NodeParts, PeerSend, SigningRound, tcp_send
from anchornode.schedule import attempt_at, due, initiator_index
from anchornode.store import CheckpointStore
from bftanchor.deployment import Deployment
from bftanchor.errors import CheckpointError
from bftanchor.template import Outpoint

log = logging.getLogger("bft_anchor.node")


class NodeService:
    def __init__(
        self,
        cfg: NodeConfig,
        deployment: Deployment,
        bft_secret: bytes,
        appliance: ApplianceClient,
        rpcs: list[PowRpc],
        source: QCSource,
        send: PeerSend = tcp_send,
    ) -> None:
        self.cfg = cfg
        self.me = cfg.validator_id
        self.deployment = deployment
        self.rpcs = rpcs
        self.source = source
        self.metrics = Metrics(self.me)
        self.stop_event = threading.Event()
        state = cfg.state_dir
        if state is not None:
            state.mkdir(parents=True, exist_ok=True)
        self.store = CheckpointStore(state / "checkpoints.sqlite" if state else None)
        self.view = ChainView(deployment, rpcs, source, self.metrics, self.store)
        # Replays are refused across restarts too: the cache lives beside the store.
        self.auth = Authenticator(
            self.view.records, ReplayCache(state / "replay.sqlite" if state else None)
        )
        self.ladders: dict[Outpoint, Ladder] = {}
        self.view.on_spent.append(lambda op: self.ladders.pop(op, None))
        self.pending_since: dict[Outpoint, int] = {}
        self.due_since: dict[int, float] = {}
        self.last_attempt: dict[int, int] = {}
        self.proposed: set[tuple[int, int]] = set()
        self._pool = ThreadPoolExecutor(max_workers=max(4, len(cfg.peers) + 1))
        parts = NodeParts(
            self.me, bft_secret, self.view, appliance, self.metrics, self.auth, self.ladders
        )
        self.round = SigningRound(cfg, parts, self._pool, send)
        self.responder = PeerResponder(
            parts, self.attempt_limit, self.note_attempt, self.round.recover_binding
        )
        self.server: PeerServer | None = None

    # --- the main loop ---------------------------------------------------------------

    def tick(self, now: float | None = None) -> str | None:
        """Follow the chain; climb a stuck ladder; initiate when due and this node's turn.
        Returns the txid this node delivered as initiator, if it made one."""
        now = time.time() if now is None else now
        view = self.view
        view.refresh_records()
        with view.lock:
            view.poll()
            tip = view.tip()
            if view.coin_spent_in_mempool():
                self._pending(tip)
                return None
            if view.restore_dropped() is not None:
                return None
            coin, seq = view.coin, view.seq
        try:
            qc = self.source.latest(epoch=coin.epoch)
        except Exception as exc:
            log.warning("cannot read QCs: %s", exc)
            return None
        if qc is None or coin.epoch not in view.records:
            return None
        record = view.records[coin.epoch]
        d = due(
            self.cfg.schedule,
            view.chain_state(tip),
            qc.epoch,
            qc.round,
            record.end_round,
            coin.epoch + 1 in view.records,
            now,
            self.deployment.handover_window,
        )
        if d is None:
            return None
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
            return None
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
            return self.round.run(seq, attempt, coin, qc, d.handover)
        except (CheckpointFailed, CheckpointError, RpcError) as exc:
            log.warning("checkpoint %d attempt %d failed: %s", seq, attempt, exc)
            return None

    def attempt_limit(self, seq: int, now: float) -> int:
        """The highest attempt this node accepts for checkpoint seq now: the attempts
        that fit in the time since the coin confirmed (its block's time, which a node
        that restarted reads as the others do; or this node's own earlier start), plus
        one for clock and poll skew. A proposal beyond it is refused, so no validator
        can make the others wait longer than the time that has really passed."""
        starts = [self.due_since.get(seq), self.view.seq_seen.get(seq), self.view.coin_time]
        since = min((t for t in starts if t is not None), default=now)
        return attempt_at(since, now, self.cfg.schedule.initiator_timeout) + 1

    def note_attempt(self, seq: int, attempt: int, now: float | None = None) -> None:
        """This node signed attempt `attempt`: count its own attempts from no later than
        that, so a node that restarted (and started counting again) catches up."""
        now = time.time() if now is None else now
        start = now - attempt * self.cfg.schedule.initiator_timeout
        self.due_since[seq] = min(self.due_since.get(seq, start), start)

    def _pending(self, tip: int) -> None:
        """The coin is spent in the mempool: wait, or move up the fee ladder when stuck."""
        op = self.view.coin.outpoint
        since = self.pending_since.setdefault(op, tip)
        ladder = self.ladders.get(op)
        if ladder is None:
            return
        tx = ladder.climb_if_stuck(tip, since, self.cfg.schedule.stuck_after)
        if tx is None:
            return
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

    def start_server(self) -> None:
        timeout = max(5.0, self.cfg.schedule.initiator_timeout)
        self.server = PeerServer(self.cfg.listen, self.auth, self.responder, timeout)

    def shutdown(self) -> None:
        self.stop_event.set()
        server, self.server = self.server, None
        if server is not None:
            server.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.auth.replay.close()

    def status(self) -> dict[str, Any]:
        return self.view.status(self.me)
