"""Peers in one process: a sealed message goes straight to the peer's responder.

The in-process devnet and the node's unit tests run several NodeServices in one
process; they still seal, authenticate and precheck every message exactly as over
TCP, only the socket is left out.
"""

from __future__ import annotations

from collections.abc import Callable

from anchornode.config import PeerConfig
from anchornode.peer_protocol import PeerError


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
