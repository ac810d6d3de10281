"""Size and fee of a real checkpoint transaction, as the PoW node measures it.

For each n the coin is funded on the regtest node, the checkpoint is built, signed by
k validators, finalized with template.finalize and handed to testmempoolaccept,
whose vsize is the figure. The baseline is our own estimate_vsize (the worst case
of 73-byte signatures that the fee is computed from), so the ratio shows how much
the estimate overpays. Tapscript checkpoints (tr(NUMS, sortedmulti_a), n = 21..150)
are measured the same way next to the wsh ones; their estimate is exact (Schnorr
signatures have one length).
"""

from __future__ import annotations

import math

from anchorharness.fleet import FEE_RATE, MAGIC, BenchFleet
from bench.context import BenchContext
from bench.table import Row
from bftanchor.epoch import SCRIPT_TR, SCRIPT_WSH
from bftanchor.payload import Payload
from bftanchor.template import (
    build_checkpoint_psbt,
    build_checkpoint_tx,
    estimate_vsize,
    fee_for,
    finalize,
    put_signature,
    signatures,
)

NAME = "tx_size"
SIZES = (4, 7, 10, 15, 20)
TAPROOT_SIZES = (21, 50, 67, 100, 150)
RATES = (1, 10, 100)  # sat/vB


def run(ctx: BenchContext) -> list[Row]:
    node = ctx.node()
    sizes = SIZES if not ctx.quick else (4, 20)
    tr_sizes = TAPROOT_SIZES if not ctx.quick else (21,)
    fleets = {(n, SCRIPT_WSH): BenchFleet(n, tag=f"size-{n}") for n in sizes}
    fleets.update({(n, SCRIPT_TR): BenchFleet(n, tag=f"size-tr-{n}", script=SCRIPT_TR)
                   for n in ((4, *tr_sizes) if not ctx.quick else tr_sizes)})
    for fleet in fleets.values():
        fleet.fund(node)
    node.mine(1)
    rows: list[Row] = []
    for (n, script), fleet in fleets.items():
        ctx.say(f"tx_size: n={n} {script}, signing with k={fleet.k} and testmempoolaccept")
        ms, coin, qc = fleet.multisig, fleet.coin, fleet.qc()
        assert coin is not None
        # What initiator.propose does, with this multisig object.
        payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=MAGIC)
        fee = fee_for(FEE_RATE, build_checkpoint_tx(coin, payload, ms, 1), ms)
        psbt = build_checkpoint_psbt(coin, ms, payload, ms, fee)
        for vid in list(fleet.signers)[: fleet.k]:
            signed = fleet.signers[vid].sign(psbt, ms)
            for pub, sig in signatures(signed, 0, ms).items():
                put_signature(psbt, 0, ms, pub, sig)
        tx = finalize(psbt, ms)
        accept = node.rpc.testmempoolaccept([tx.serialize().hex()])[0]
        if not accept.get("allowed"):
            raise RuntimeError(f"n={n}: the node refused the checkpoint: {accept}")
        vsize = int(accept["vsize"])
        estimate = estimate_vsize(tx, ms)
        weight = len(tx.serialize())  # total bytes, for the note
        case = f"n={n} k={fleet.k} {script}"
        note = f"{weight} bytes serialized"
        if script == SCRIPT_TR:
            note += f"; {vsize / n:.1f} vB per validator"
        rows.append(
            Row(
                NAME,
                case,
                "vsize (testmempoolaccept)",
                vsize,
                "vB",
                estimate,
                "estimate_vsize",
                note,
            )
        )
        for rate in RATES:
            rows.append(
                Row(
                    NAME,
                    case,
                    f"fee at {rate} sat/vB",
                    rate * vsize,
                    "sat",
                    math.ceil(rate * estimate),
                    "fee from estimate",
                )
            )
    return rows
