"""The TCP listener that feeds peers' sealed messages to the responder."""

from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Callable

from anchornode.peer_protocol import PeerError, read_frame, write_frame

log = logging.getLogger("bft_anchor.node")


class _Server(socketserver.ThreadingTCPServer):
    # Set on this subclass only: ThreadingTCPServer's own attribute is process-wide.
    allow_reuse_address = True
    daemon_threads = True


class PeerServer:
    """One request frame per connection, answered by `handle`, in a thread each."""

    def __init__(
        self, listen: tuple[str, int], handle: Callable[[bytes], bytes], timeout: float
    ) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(timeout)
                try:
                    raw = read_frame(sock)
                    write_frame(sock, handle(raw))
                except (PeerError, OSError) as exc:
                    log.info("peer connection from %s: %s", self.client_address[0], exc)

        self._server = _Server(listen, Handler)
        self.address: tuple[str, int] = self._server.server_address[:2]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
