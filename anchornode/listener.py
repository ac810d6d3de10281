"""Bounded TCP listeners for the node's open ports (peer protocol, /metrics and /status).

A port anyone can reach must not let anyone hold the node's threads, file
descriptors or memory: at most `max_connections` at once (the rest are closed at
accept), every connection closed after `lifetime` seconds whatever it is doing
(idle, or dripping a byte at a time), daemon threads, and log lines about
strangers rate-limited and cut short so a flood cannot fill the disk.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import sys
import threading
import time
from typing import Any

log = logging.getLogger("bft_anchor.node")

MAX_LOGGED = 160  # characters of anything a stranger sent that may reach a log line


def short(text: object, limit: int = MAX_LOGGED) -> str:
    """Printable, one line, at most limit characters: for echoing untrusted input."""
    s = "".join(c if c.isprintable() else "?" for c in str(text))
    return s if len(s) <= limit else s[: limit - 3] + "..."


def warn_if_public(what: str, host: str) -> bool:
    """Log a warning when a listener binds all interfaces; True if it does."""
    try:
        public = host in ("", "*") or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        public = False
    if public:
        log.warning(
            "%s listens on %s, every interface: bind 127.0.0.1 or a private address "
            "unless the port is firewalled",
            what,
            host or "0.0.0.0",
        )
    return public


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RateLimitedLog:
    """At most `burst` lines per `period` seconds; the rest are counted and summarised."""

    def __init__(self, logger: logging.Logger, burst: int = 20, period: float = 60.0) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self._lock = threading.Lock()
        self._window = 0.0
        self._count = 0
        self._dropped = 0

    def __call__(self, level: int, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._window >= self.period:
                dropped, self._dropped = self._dropped, 0
                self._window, self._count = now, 0
                if dropped:
                    self.logger.warning("%d similar log line(s) suppressed", dropped)
            if self._count >= self.burst:
                self._dropped += 1
                return
            self._count += 1
        self.logger.log(level, fmt, *args)


_conn_log = RateLimitedLog(log)


class BoundedServerMixin:
    """For socketserver.ThreadingMixIn servers: a connection cap and a lifetime per
    connection, enforced by one reaper thread (a per-recv timeout alone lets a slow
    sender hold a connection for ever)."""

    max_connections = 64
    lifetime = 30.0
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def _bounded_init(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._live: dict[socket.socket, float] = {}
        self._live_lock = threading.Lock()
        self._closing = threading.Event()
        self.refused_connections = 0
        threading.Thread(target=self._reap, name="listener-reaper", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused_connections += 1
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        with self._live_lock:
            self._live[request] = time.monotonic() + self.lifetime
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except Exception:
            self._release(request)
            raise

    def shutdown_request(self, request: Any) -> None:
        self._release(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def _release(self, request: Any) -> None:
        with self._live_lock:
            if self._live.pop(request, None) is None:
                return
        self._slots.release()

    def _reap(self) -> None:
        while not self._closing.wait(min(1.0, self.lifetime / 4)):  # cut within 1/4 lifetime
            now = time.monotonic()
            with self._live_lock:
                expired = [s for s, deadline in self._live.items() if deadline < now]
            for sock in expired:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the handler's recv/send fails at once
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One short, rate-limited line instead of socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        _conn_log(logging.INFO, "connection from %s ended: %s", client_address[0], short(exc))

    def server_close(self) -> None:
        self._closing.set()
        super().server_close()  # type: ignore[misc]

    @property
    def open_connections(self) -> int:
        with self._live_lock:
            return len(self._live)


class BoundedTCPServer(BoundedServerMixin, socketserver.ThreadingTCPServer):
    def __init__(self, address: tuple[str, int], handler: Any, **limits: Any) -> None:
        for k, v in limits.items():
            setattr(self, k, v)
        self._bounded_init()
        super().__init__(address, handler)


def serve_in_thread(server: socketserver.BaseServer, name: str) -> threading.Thread:
    # shutdown() waits for the loop's next poll: 0.1 s, not socketserver's 0.5 s.
    t = threading.Thread(target=server.serve_forever, args=(0.1,), name=name, daemon=True)
    t.start()
    return t
