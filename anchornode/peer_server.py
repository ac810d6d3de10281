"""The TCP listener that feeds peers' sealed messages to the responder.

Bounded like every port a stranger can reach (listener.py): a connection cap, a
lifetime per connection, and the message's signed header authenticated before its
body is read. Every request gets a reply: an error reply for anything malformed or
unauthenticated, never a dead thread.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct

from anchornode.listener import (
    BoundedTCPServer,
    RateLimitedLog,
    serve_in_thread,
    short,
    warn_if_public,
)
from anchornode.peer_protocol import Authenticator, PeerError, write_frame
from anchornode.responder import PeerResponder

log = logging.getLogger("bft_anchor.node")
conn_log = RateLimitedLog(log)


def _drain(sock: socket.socket, limit: int = 65536, wait: float = 0.5) -> None:
    """Read (a bounded amount of) what the sender still has in flight, so that closing
    does not reset the connection before our error reply has reached it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(wait)
        got = 0
        while got < limit:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += len(chunk)
    except OSError:
        pass


class PeerServer:
    """One request per connection, answered by the responder, in a thread each."""

    def __init__(
        self,
        listen: tuple[str, int],
        auth: Authenticator,
        responder: PeerResponder,
        timeout: float,
        max_connections: int = 32,
    ) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(timeout)
                who = self.client_address[0]
                try:
                    try:
                        msg = auth.receive(sock)
                    except (PeerError, struct.error, TimeoutError) as exc:
                        write_frame(sock, responder.reject(exc, who))
                        _drain(sock)
                        return
                    write_frame(sock, responder.respond(msg))
                except (PeerError, OSError) as exc:
                    conn_log(logging.INFO, "peer connection from %s: %s", who, short(exc))

        warn_if_public("the peer protocol", listen[0])
        self._server = BoundedTCPServer(
            listen, Handler, max_connections=max_connections, lifetime=2 * timeout + 5
        )
        self.address: tuple[str, int] = self._server.server_address[:2]
        serve_in_thread(self._server, "peer-server")

    @property
    def open_connections(self) -> int:
        return self._server.open_connections

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
