"""Hand a finished checkpoint to every configured PoW node."""

from __future__ import annotations

import logging

from embit.transaction import Transaction

from anchornode.pow.rpc import PowRpc, RpcError

log = logging.getLogger("bft_anchor.node")


class CheckpointFailed(Exception):
    """A signing round or a delivery did not produce a checkpoint."""


def deliver(tx: Transaction, nodes: list[PowRpc]) -> list[str]:
    """Send to every node; 'already known' counts as delivered. Returns the nodes reached."""
    raw = tx.serialize().hex()
    reached, errors = [], []
    for rpc in nodes:
        try:
            rpc.sendrawtransaction(raw)
            reached.append(repr(rpc))
        except RpcError as exc:
            text = str(exc).lower()
            if "already" in text or "txn-already-known" in text or exc.code == -27:
                reached.append(repr(rpc))
            else:
                errors.append(f"{rpc!r}: {exc}")
    if not reached:
        raise CheckpointFailed("no PoW node accepted the transaction: " + "; ".join(errors))
    for e in errors:
        log.warning("delivery failed at %s", e)
    return reached
