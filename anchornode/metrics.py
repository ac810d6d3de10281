"""Counters and gauges an operator scrapes at /metrics (Prometheus text format)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class Metrics:
    def __init__(self, validator_id: str) -> None:
        self.validator_id = validator_id
        self._lock = threading.Lock()
        self.checkpoints_made = 0
        self.checkpoints_confirmed = 0
        self.failovers = 0
        self.last_checkpoint_height = -1
        self.last_checkpoint_time = 0.0
        self.refusals: dict[str, int] = defaultdict(int)
        self.latencies: list[float] = []
        self.signers: dict[str, list[str]] = {}  # txid -> validator ids that signed

    def inc(self, name: str, by: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + by)

    def refusal(self, reason: str) -> None:
        key = reason.split(":")[0][:60] if reason else "unknown"
        with self._lock:
            self.refusals[key] += 1

    def confirmed(self, height: int, when: float, txid: str, signers: list[str]) -> None:
        with self._lock:
            self.checkpoints_confirmed += 1
            self.last_checkpoint_height = height
            self.last_checkpoint_time = when
            self.signers[txid] = signers
            if len(self.signers) > 100:
                self.signers.pop(next(iter(self.signers)))

    def latency(self, seconds: float) -> None:
        with self._lock:
            self.latencies.append(seconds)
            del self.latencies[:-1000]

    def render(self) -> str:
        with self._lock:
            v = _escape(self.validator_id)
            age = time.time() - self.last_checkpoint_time if self.last_checkpoint_time else -1.0
            lines = [
                "# HELP bft_anchor_checkpoints_made_total Checkpoints this node delivered.",
                "# TYPE bft_anchor_checkpoints_made_total counter",
                f'bft_anchor_checkpoints_made_total{{validator="{v}"}} {self.checkpoints_made}',
                "# HELP bft_anchor_checkpoints_confirmed_total Checkpoints seen confirmed.",
                "# TYPE bft_anchor_checkpoints_confirmed_total counter",
                f'bft_anchor_checkpoints_confirmed_total{{validator="{v}"}} '
                f"{self.checkpoints_confirmed}",
                "# HELP bft_anchor_last_checkpoint_height Height of the last confirmed one.",
                "# TYPE bft_anchor_last_checkpoint_height gauge",
                f'bft_anchor_last_checkpoint_height{{validator="{v}"}} '
                f"{self.last_checkpoint_height}",
                "# HELP bft_anchor_last_checkpoint_age_seconds Seconds since it was seen.",
                "# TYPE bft_anchor_last_checkpoint_age_seconds gauge",
                f'bft_anchor_last_checkpoint_age_seconds{{validator="{v}"}} '
                f"{age:.1f}",
                "# HELP bft_anchor_failovers_total Attempts that passed to the next initiator.",
                "# TYPE bft_anchor_failovers_total counter",
                f'bft_anchor_failovers_total{{validator="{v}"}} {self.failovers}',
                "# HELP bft_anchor_refusals_total Signing refusals seen, by reason.",
                "# TYPE bft_anchor_refusals_total counter",
            ]
            for reason, count in sorted(self.refusals.items()):
                lines.append(
                    f'bft_anchor_refusals_total{{validator="{v}",reason="{_escape(reason)}"}} '
                    f"{count}"
                )
            lat = sorted(self.latencies)
            lines += [
                "# HELP bft_anchor_signing_latency_seconds From proposal to k signatures.",
                "# TYPE bft_anchor_signing_latency_seconds summary",
            ]
            for q in (0.5, 0.95):
                value = lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0
                lines.append(
                    f'bft_anchor_signing_latency_seconds{{validator="{v}",quantile="{q}"}} '
                    f"{value:.4f}"
                )
            lines += [
                f'bft_anchor_signing_latency_seconds_count{{validator="{v}"}} {len(lat)}',
                f'bft_anchor_signing_latency_seconds_sum{{validator="{v}"}} {sum(lat):.4f}',
                "# HELP bft_anchor_checkpoint_signed_by Which validators signed a checkpoint.",
                "# TYPE bft_anchor_checkpoint_signed_by gauge",
            ]
            for txid, ids in self.signers.items():
                for sid in ids:
                    labels = f'txid="{txid}",signer="{_escape(sid)}"'
                    lines.append(f"bft_anchor_checkpoint_signed_by{{{labels}}} 1")
            return "\n".join(lines) + "\n"


def serve_metrics(
    metrics: Metrics, status: Callable[[], dict[str, Any]], host: str, port: int
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/metrics":
                body, ctype = metrics.render().encode(), "text/plain; version=0.0.4"
            elif self.path == "/status":
                body, ctype = json.dumps(status(), default=str).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
