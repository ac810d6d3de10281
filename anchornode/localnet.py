"""Peers in one process: a sealed message goes straight to the peer's responder.

The in-process devnet and the node's unit tests run several NodeServices in one
process; they still seal, authenticate and precheck every message exactly as over
TCP, only the socket is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from anchornode.config import NodeConfig, PeerConfig, PowNodeConfig
from anchornode.fees import FeePolicy
from anchornode.peer_protocol import PeerError
from anchornode.pow.rpc import PowRpc
from anchornode.qcsource import QCSource
from anchornode.schedule import ScheduleConfig
from anchornode.service import NodeService
from bftanchor.deployment import Deployment


class LocalNet:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[bytes], bytes]] = {}
        self.down: set[str] = set()  # validators that do not answer (tests, failover)

    def register(self, validator_id: str, handle: Callable[[bytes], bytes]) -> None:
        self.handlers[validator_id] = handle

    def send(self, peer: PeerConfig, data: bytes, timeout: float) -> bytes:
        handle = self.handlers.get(peer.id)
        if handle is None or peer.id in self.down:
            raise PeerError(f"{peer.id} does not answer")
        return handle(data)


def local_node(
    net: LocalNet,
    validator_id: str,
    bft_secret: bytes,
    deployment: Deployment,
    appliance: Any,
    rpcs: list[PowRpc],
    source: QCSource,
    everyone: list[str],
    schedule: ScheduleConfig | None = None,
    fees: FeePolicy | None = None,
    ladder: int = 3,
) -> NodeService:
    """One validator's node in this process: the NodeService `bft-anchor node` runs, its
    peers (everyone else) reached through `net`."""
    cfg = NodeConfig(
        path=Path("local"),
        validator_id=validator_id,
        bft_key_file=Path("-"),
        deployment=Path("-"),
        qc_source="local",
        listen=("127.0.0.1", 0),
        metrics=None,
        appliance_link="local",
        appliance_secret=None,
        peers=[PeerConfig(p, "127.0.0.1", 0) for p in everyone if p != validator_id],
        pow_nodes=[PowNodeConfig(repr(r)) for r in rpcs],
        schedule=schedule or ScheduleConfig(),
        fees=fees or FeePolicy(),
        ladder=ladder,
    )
    service = NodeService(cfg, deployment, bft_secret, appliance, rpcs, source, send=net.send)
    net.register(validator_id, service.responder.handle)
    return service
