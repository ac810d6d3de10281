"""Node-side latency: from a QC's arrival to the PoW node accepting the checkpoint.

Timed: the initiator's NodeService round itself (anchornode/round.py: build the
PSBT, sign on its own appliance, ask every peer in parallel through the peer
protocol, each peer's precheck and appliance, verify, finalize, sendrawtransaction).
The n nodes run in this process (the devnet's `local_node`s joined by LocalNet: every
message is sealed and authenticated, only the socket is left out). One fee level per
round, so the figure is one checkpoint's. The baseline is the time the appliances
spent deciding inside that round (summed over threads), so the ratio is what the node
and the peer protocol add on top of the unavoidable signing. Between samples
(untimed) a block is mined and every node follows it: a checkpoint spends only a
confirmed coin.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from anchornode.appliance_client import InProcessAppliance
from anchornode.fees import FeePolicy
from anchornode.localnet import LocalNet, local_node
from anchornode.qcsource import MemorySource
from anchornode.schedule import ScheduleConfig
from bench.context import BenchContext
from bench.fleet import FEE_RATE, BenchFleet
from bench.table import Row
from bench.timing import keep_going, median, p95
from bftanchor.signreply import SignReply

NAME = "node_latency"
SIZES = (4, 7, 15)
# Journals grow by one row per checkpoint and decisions slow as they grow.
MAX_CHECKPOINTS = 60


class TimedAppliance(InProcessAppliance):
    """An in-process appliance whose decision time is added to a shared counter."""

    def __init__(self, appliance: Any, spent: list[float], lock: threading.Lock) -> None:
        super().__init__(appliance)
        self.spent = spent
        self.lock = lock

    def sign(self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: Any) -> SignReply:
        t0 = time.perf_counter()
        try:
            return super().sign(psbt_b64, qc_json, records_json, lineage)
        finally:
            with self.lock:
                self.spent[0] += time.perf_counter() - t0


def run(ctx: BenchContext) -> list[Row]:
    node = ctx.node()
    rows: list[Row] = []
    fleets = {n: BenchFleet(n, tag=f"latency-{n}") for n in SIZES}
    for fleet in fleets.values():
        fleet.fund(node)
    node.mine(1)
    for n, fleet in fleets.items():
        peers = fleet.peers(ctx.scratch(f"latency-{n}"))
        spent, lock = [0.0], threading.Lock()
        source = MemorySource()
        source.publish_record(fleet.record)
        net = LocalNet()
        everyone = [p.validator_id for p in peers]
        secrets_ = {v.id: v.bft_secret for v in fleet.sim.validators}
        nodes = {
            p.validator_id: local_node(
                net,
                p.validator_id,
                secrets_[p.validator_id],
                fleet.deployment,
                TimedAppliance(p.appliance, spent, lock),
                [node.rpc],
                source,
                everyone,
                ScheduleConfig(initiator_timeout=60.0),
                FeePolicy(override=FEE_RATE),
                ladder=1,
            )
            for p in peers
        }
        total_t: list[float] = []
        sign_t: list[float] = []
        ctx.say(f"node_latency: n={n}, QC -> the node's round -> accepted by the PoW node")
        start = time.perf_counter()
        seq = 0
        try:
            while keep_going(
                start, ctx.pick(15.0, 1.5), len(total_t), ctx.pick(20, 4), MAX_CHECKPOINTS
            ):
                qc = fleet.qc()
                source.publish_qc(qc)
                initiator = nodes[everyone[seq % n]]
                initiator.view.poll()
                coin = initiator.view.coin
                spent[0] = 0.0
                t0 = time.perf_counter()
                initiator.round.run(seq, 0, coin, qc, False)
                total_t.append(time.perf_counter() - t0)
                with lock:
                    sign_t.append(spent[0])
                node.mine(1)
                for s in nodes.values():
                    s.view.poll()
                seq += 1
        finally:
            for s in nodes.values():
                s.shutdown()
            for p in peers:
                p.appliance.journal.close()
        case = f"n={n} k={fleet.k}"
        label = "appliance decisions (all threads)"
        note = f"{len(total_t)} checkpoints, one fee level each, peers asked in parallel"
        rows.append(
            Row(
                NAME,
                case,
                "QC -> accepted by node, median",
                median(total_t) * 1e3,
                "ms",
                median(sign_t) * 1e3,
                label,
                note,
            )
        )
        rows.append(
            Row(
                NAME,
                case,
                "QC -> accepted by node, p95",
                p95(total_t) * 1e3,
                "ms",
                p95(sign_t) * 1e3,
                label,
            )
        )
    return rows
