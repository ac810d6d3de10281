"""`bft-anchor devnet --nodes`: the devnet with every validator's node a process too.

Same report as the all-in-one devnet, but checkpoints come from the node processes
themselves (peer protocol, schedule, failover) rather than from a coordinator.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anchornode.cluster import Cluster, ClusterOptions

_BROADCAST = re.compile(r"broadcast: epoch \d+ round \d+ txid (\w+)")


def run_network_devnet(validators: int, epochs: int, datadir: Path | None,
                       say: Callable[[str], None]) -> dict[str, Any]:
    tmp = None
    if datadir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bft-anchor-devnet-")
        datadir = Path(tmp.name)
    opts = ClusterOptions(validators=validators, epochs=epochs, rounds_per_epoch=48,
                          round_interval=0.25, block_interval=0.8, handover_margin=12,
                          initiator_timeout=6.0)
    try:
        with Cluster(Path(datadir), opts) as c:
            shown: set[str] = set()
            deadline = time.monotonic() + epochs * opts.rounds_per_epoch * 1.0 + 60
            while not c.finished and time.monotonic() < deadline:
                if c.error:  # the PoW node would not mine: nothing more can happen
                    raise RuntimeError(c.error)
                for cp in c.checkpoints():
                    if cp.txid not in shown:
                        shown.add(cp.txid)
                        say(f"epoch {cp.epoch} round {cp.round:>4} txid {cp.txid} height "
                            f"{cp.height}{' HANDOVER' if cp.handover else ''}")
                time.sleep(1.0)
            time.sleep(3 * opts.block_interval)
            report = c.audit()
            initiators: dict[str, str] = {}
            for m in c.members:
                for txid in _BROADCAST.findall(c.logs(m.id)):
                    initiators.setdefault(txid, m.id)
            if not c.finished:
                report.violations.append("the BFT chain did not finish its epochs in time")
            return {
                "chain": c.deployment.chain,
                "magic": c.deployment.magic.hex(),
                "genesis": {"txid": c.genesis.outpoint.txid, "vout": c.genesis.outpoint.vout},
                "epochs": [c.records[e].to_json() for e in sorted(c.records)],
                "checkpoints": [dict(cp.to_json(), initiator=initiators.get(cp.txid))
                                for cp in report.checkpoints],
                "audit": {"ok": report.ok, "violations": report.violations + report.missing},
            }
    finally:
        if tmp is not None:
            tmp.cleanup()
