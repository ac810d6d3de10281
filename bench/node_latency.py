"""Node-side latency: from a QC's arrival to the PoW node accepting the checkpoint.

Timed: propose (build the PSBT), collect (ask the n in-process appliances in turn
until k signed), assemble (finalize) and sendrawtransaction. The baseline is the
time the k appliances spent deciding inside that same collect, so the ratio is
what the initiator and the node add on top of the unavoidable signing.
Between samples (untimed) the other appliances sign too, so every journal follows
the coin, and a block is mined, since a checkpoint spends only a confirmed coin.
"""

from __future__ import annotations

import time
from typing import Any

from anchornode.initiator import assemble, collect
from bench.context import BenchContext
from bench.fleet import BenchFleet, LocalPeer
from bench.table import Row
from bench.timing import keep_going, median, p95

NAME = "node_latency"
SIZES = (4, 7, 15)
# Journals grow by one row per checkpoint and decisions slow as they grow.
MAX_CHECKPOINTS = 60


class TimedPeer:
    """A peer whose request_signature time is added to a shared counter."""

    def __init__(self, peer: LocalPeer, spent: list[float]) -> None:
        self.peer = peer
        self.validator_id = peer.validator_id
        self.spent = spent

    def request_signature(self, psbt_b64: str, qc_json: Any, records_json: Any) -> dict:
        t0 = time.perf_counter()
        try:
            return self.peer.request_signature(psbt_b64, qc_json, records_json)
        finally:
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
        spent = [0.0]
        timed = [TimedPeer(p, spent) for p in peers]
        total_t: list[float] = []
        sign_t: list[float] = []
        send_t: list[float] = []
        ctx.say(f"node_latency: n={n}, QC -> propose -> collect -> assemble -> send")
        start = time.perf_counter()
        while keep_going(
            start, ctx.pick(15.0, 1.5), len(total_t), ctx.pick(20, 4), MAX_CHECKPOINTS
        ):
            qc = fleet.qc()
            spent[0] = 0.0
            t0 = time.perf_counter()
            proposal = fleet.propose(qc)
            psbt, signed_by, refusals = collect(proposal, timed)
            tx = assemble(proposal, psbt)
            t1 = time.perf_counter()
            txid = node.rpc.sendrawtransaction(tx.serialize().hex())
            t2 = time.perf_counter()
            if len(signed_by) < fleet.k:
                raise RuntimeError(f"n={n}: only {signed_by} signed: {refusals}")
            total_t.append(t2 - t0)
            sign_t.append(spent[0])
            send_t.append(t2 - t1)
            request = (
                proposal.psbt.to_string(),
                qc.to_json(),
                [r.to_json() for r in proposal.records],
            )
            for p in peers:
                if p.validator_id not in signed_by:
                    p.request_signature(*request)
            node.mine(1)
            fleet.advance(proposal, txid)
        for p in peers:
            p.appliance.journal.close()
        case = f"n={n} k={fleet.k}"
        label = f"{fleet.k} appliance decisions"
        note = (
            f"{len(total_t)} checkpoints; sendrawtransaction median {median(send_t) * 1e3:.2f} ms"
        )
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
