"""What an operator scrapes at /metrics (prometheus-client) and reads at /status.

Every label set is bounded: `validator` is this node, `signer` a validator id of
an epoch record the node holds, `reason` one of REFUSAL_KINDS. A transaction id or
a peer's free text never becomes a label (an unbounded label set is a memory leak
in the node and in Prometheus). The HTTP server answers HTTP/1.0 (one request per
connection), closes idle and slow connections, and caps how many are open.
/status is answered only to loopback clients, or to whoever presents the token
when one is configured.
"""

from __future__ import annotations

import hmac
import http.client
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from anchornode.listener import BoundedServerMixin, is_loopback, serve_in_thread, warn_if_public

# Refusal reasons are free text (some from peers): each is filed under one of these.
REFUSAL_KINDS = {
    "unauthenticated": ("unauthenticated", "forged", "not a validator", "not held", "version"),
    "replay": ("replay",),
    "stale": ("off our clock",),
    "malformed": ("malformed", "not json", "lacks", "mangles", "too deep", "exceeds", "field"),
    "appliance": ("appliance", "journal"),
    "bad_signature": ("bad signature",),
    "not_initiator": ("not the initiator",),
    "attempt": ("attempt",),
    "sequence": ("proposal for checkpoint",),
    "qc": ("qc",),
    "payload": ("payload", "output 0"),
    "coin": ("coin",),
}
SEEN_TXIDS = 100_000  # confirmed checkpoints remembered so a rescan counts none twice


def refusal_kind(reason: str) -> str:
    text = (reason or "").lower()
    for kind, needles in REFUSAL_KINDS.items():
        if any(n in text for n in needles):
            return kind
    return "other"


LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)
# Every metric: its name after "bft_anchor_", kind, help, and labels after "validator".
METRICS: tuple[tuple[str, type[Counter | Gauge | Histogram], str, tuple[str, ...]], ...] = (
    ("checkpoints_made", Counter, "Checkpoints this node delivered.", ()),
    (
        "checkpoints_confirmed",
        Counter,
        "Checkpoints seen confirmed, each counted once (a rescan or reorg counts none again).",
        (),
    ),
    ("failovers", Counter, "Attempts that passed to the next initiator.", ()),
    (
        "rebroadcasts",
        Counter,
        "Checkpoints sent again to the PoW nodes after a reorganisation dropped them.",
        (),
    ),
    ("refusals", Counter, "Signing refusals seen, by kind.", ("reason",)),
    ("checkpoints_signed", Counter, "Confirmed checkpoints by who signed them.", ("signer",)),
    (
        "last_checkpoint_signed",
        Gauge,
        "1 for each validator whose signature is on the last confirmed checkpoint, else 0.",
        ("signer",),
    ),
    ("last_checkpoint_height", Gauge, "Height of the last confirmed one.", ()),
    ("last_checkpoint_age_seconds", Gauge, "Seconds since it was seen.", ()),
    ("signing_latency_seconds", Histogram, "From proposal to k signatures.", ()),
)
EVENTS = ("checkpoints_made", "failovers", "rebroadcasts")  # what Metrics.inc counts


class Metrics:
    def __init__(self, validator_id: str) -> None:
        self.validator_id = validator_id
        self.registry = CollectorRegistry(auto_describe=True)
        self._m: dict[str, Any] = {}
        for key, kind, doc, labels in METRICS:
            extra = {"buckets": LATENCY_BUCKETS} if kind is Histogram else {}
            self._m[key] = kind(
                f"bft_anchor_{key}", doc, ["validator", *labels], registry=self.registry, **extra
            )
        me = validator_id
        self._m["last_checkpoint_height"].labels(me).set(-1)
        self._m["last_checkpoint_age_seconds"].labels(me).set_function(self._age_now)
        for key in ("checkpoints_made", "checkpoints_confirmed", "failovers", "rebroadcasts"):
            self._m[key].labels(me)
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._last_time = 0.0
        self._signers: set[str] = set()

    def _age_now(self) -> float:
        return time.time() - self._last_time if self._last_time else -1.0

    # --- events -----------------------------------------------------------------------

    def inc(self, name: str, by: int = 1) -> None:
        """Count an event: checkpoints_made, failovers or rebroadcasts."""
        if name not in EVENTS:
            raise KeyError(name)
        self._m[name].labels(self.validator_id).inc(by)

    def refusal(self, reason: str) -> None:
        self._m["refusals"].labels(self.validator_id, refusal_kind(reason)).inc()

    def confirmed(self, height: int, when: float, txid: str, signers: list[str]) -> None:
        """A checkpoint seen confirmed; counted once per txid, however often it is seen."""
        with self._lock:
            self._m["last_checkpoint_height"].labels(self.validator_id).set(height)
            self._last_time = when
            for s in self._signers - set(signers):
                self._m["last_checkpoint_signed"].labels(self.validator_id, s).set(0)
            for s in signers:
                self._m["last_checkpoint_signed"].labels(self.validator_id, s).set(1)
            self._signers |= set(signers)
            if txid in self._seen:
                return
            self._seen[txid] = None
            while len(self._seen) > SEEN_TXIDS:
                self._seen.popitem(last=False)
            self._m["checkpoints_confirmed"].labels(self.validator_id).inc()
            for s in signers:
                self._m["checkpoints_signed"].labels(self.validator_id, s).inc()

    def latency(self, seconds: float) -> None:
        self._m["signing_latency_seconds"].labels(self.validator_id).observe(seconds)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (tests, status); 0 when it has none yet."""
        got = self.registry.get_sample_value(name, dict(labels, validator=self.validator_id))
        return 0.0 if got is None else got

    def render(self) -> str:
        return generate_latest(self.registry).decode()


MAX_REQUEST = 16 * 1024  # bytes of request line and headers read from one connection


class _Capped:
    """A reader that refuses to read more than `left` bytes (http.server answers 431 or
    hangs up): it would otherwise buffer up to 100 header lines of 64 KiB each from
    every connection."""

    def __init__(self, raw: Any, left: int) -> None:
        self.raw = raw
        self.left = left

    def _take(self, read: Callable[[int], bytes], size: int | None) -> bytes:
        if self.left <= 0:
            raise http.client.LineTooLong(f"request longer than {MAX_REQUEST} bytes")
        data = read(self.left if size is None or size < 0 else min(size, self.left))
        self.left -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        return self._take(self.raw.readline, size)

    def read(self, size: int = -1) -> bytes:
        return self._take(self.raw.read, size)

    def close(self) -> None:
        self.raw.close()


class MetricsServer(BoundedServerMixin, ThreadingHTTPServer):
    max_connections = 32
    lifetime = 10.0

    def __init__(self, address: tuple[str, int], handler: Any, lifetime: float = 10.0) -> None:
        self.lifetime = lifetime
        self._bounded_init()
        super().__init__(address, handler)


def serve_metrics(
    metrics: Metrics,
    status: Callable[[], dict[str, Any]],
    host: str,
    port: int,
    status_token: str | None = None,
    lifetime: float = 10.0,
) -> MetricsServer:
    """Serve /metrics to anyone who can reach the port, /status to loopback or token holders."""

    class Handler(BaseHTTPRequestHandler):
        timeout = min(5.0, lifetime)  # per read: an idle connection is closed
        protocol_version = "HTTP/1.0"

        def setup(self) -> None:
            super().setup()
            self.rfile = _Capped(self.rfile, MAX_REQUEST)  # type: ignore[assignment]

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/metrics":
                body, ctype = metrics.render().encode(), CONTENT_TYPE_LATEST
            elif self.path == "/status":
                if not self._may_see_status():
                    self.send_error(403, "status needs a loopback client or the bearer token")
                    return
                body, ctype = json.dumps(status(), default=str).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _may_see_status(self) -> bool:
            if status_token:
                given = self.headers.get("Authorization", "")
                return hmac.compare_digest(given.encode(), f"Bearer {status_token}".encode())
            return is_loopback(self.client_address[0])

        def log_message(self, *args: Any) -> None:
            pass  # strangers' request lines never reach the log

    warn_if_public("metrics and /status", host)
    server = MetricsServer((host, port), Handler, lifetime)
    serve_in_thread(server, "metrics")
    return server
