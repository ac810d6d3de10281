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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from anchorharness.fleet import FEE_RATE, BenchFleet
from anchornode.appliance_client import InProcessAppliance
from anchornode.fees import FeePolicy
from anchornode.localnet import LocalNet, local_node
from anchornode.qcsource import MemorySource
from anchornode.schedule import ScheduleConfig
from bench.context import BenchContext
from bench.table import Row
from bench.timing import keep_going, median, p95
from bftanchor.epoch import SCRIPT_TR, SCRIPT_WSH
from bftanchor.signreply import SignReply

NAME = "node_latency"
SIZES = (4, 7, 15)
# And a tapscript epoch of 100 validators (67-of-100), with the round's breakdown.
TAPROOT_N = 100
# The round's steps, timed by wrapping the functions anchornode/round.py calls.
STEPS = ("build_ladder", "sign_locally", "add_signatures", "finalize", "deliver")
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


@contextmanager
def step_timers() -> Iterator[dict[str, list[float]]]:
    """Time each step of the initiator's round (per round: the sum of its calls)."""
    import anchornode.round as rnd

    spent: dict[str, list[float]] = {name: [0.0] for name in STEPS}
    originals = {name: getattr(rnd, name) for name in STEPS}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[name][-1] += time.perf_counter() - t0
        return wrapper

    for name, fn in originals.items():
        setattr(rnd, name, timed(name, fn))
    try:
        yield spent
    finally:
        for name, fn in originals.items():
            setattr(rnd, name, fn)


def run(ctx: BenchContext) -> list[Row]:
    node = ctx.node()
    rows: list[Row] = []
    fleets = {(n, SCRIPT_WSH): BenchFleet(n, tag=f"latency-{n}") for n in SIZES}
    tr_n = TAPROOT_N if not ctx.quick else 21
    fleets[(tr_n, SCRIPT_TR)] = BenchFleet(tr_n, tag=f"latency-tr-{tr_n}", script=SCRIPT_TR)
    for fleet in fleets.values():
        fleet.fund(node)
    node.mine(1)
    for (n, script), fleet in fleets.items():
        rows += one_size(ctx, node, n, script, fleet)
    return rows


def one_size(ctx: BenchContext, node: Any, n: int, script: str, fleet: BenchFleet) -> list[Row]:
    rows: list[Row] = []
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
            ScheduleConfig(initiator_timeout=60.0 if n <= 20 else 240.0),
            FeePolicy(override=FEE_RATE),
            ladder=1,
        )
        for p in peers
    }
    total_t: list[float] = []
    sign_t: list[float] = []
    ctx.say(f"node_latency: n={n} {script}, QC -> the node's round -> accepted by the PoW "
            "node")
    start = time.perf_counter()
    seq = 0
    big = n > 20
    timers = step_timers()
    steps = timers.__enter__()
    try:
        while keep_going(
            start,
            ctx.pick(60.0 if big else 15.0, 1.5),
            len(total_t),
            ctx.pick(5 if big else 20, 2 if big else 4),
            MAX_CHECKPOINTS,
        ):
            qc = fleet.qc()
            source.publish_qc(qc)
            initiator = nodes[everyone[seq % n]]
            initiator.view.poll()
            coin = initiator.view.coin
            spent[0] = 0.0
            for v in steps.values():
                v.append(0.0)
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
        timers.__exit__(None, None, None)
        for s in nodes.values():
            s.shutdown()
        for p in peers:
            p.appliance.journal.close()
    case = f"n={n} k={fleet.k}" + (f" {script}" if script != SCRIPT_WSH else "")
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
    if big:
        # Where the round's time goes (medians over the rounds; waiting for the k-th
        # peer's answer is what remains; peers decide in parallel threads).
        parts = {name: median(v[1:]) * 1e3 for name, v in steps.items()}
        total = median(total_t) * 1e3
        parts["waiting for k peers (precheck, appliance, messages)"] = total - sum(
            parts.values()
        )
        for name, ms in parts.items():
            rows.append(
                Row(NAME, case, f"  of which {name}", ms, "ms", total, "the whole round")
            )
    return rows
