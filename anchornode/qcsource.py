"""Where a node gets QCs and epoch records from its BFT node.

Two sources: a directory the BFT node writes files into (atomically: write a
temporary file, then rename), and an HTTP endpoint serving the same content. The
devnet's simulated chain writes a directory; `serve_directory` serves one over HTTP.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError
from bftanchor.qc import QC

MAX_FILE = 1024 * 1024


class QCSourceError(Exception):
    pass


class QCSource(Protocol):
    def latest(self, epoch: int | None = None, max_round: int | None = None) -> QC | None: ...

    def records(self) -> list[EpochRecord]: ...


def qc_name(epoch: int, round: int) -> str:
    return f"e{epoch:08d}-r{round:012d}.json"


def _atomic_write(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


class DirectoryWriter:
    """The BFT node's side: publish QCs and certified epoch records."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "qc").mkdir(parents=True, exist_ok=True)
        (self.root / "epochs").mkdir(parents=True, exist_ok=True)

    def publish_qc(self, qc: QC) -> None:
        _atomic_write(self.root / "qc" / qc_name(qc.epoch, qc.round), qc.to_json())

    def publish_record(self, record: EpochRecord) -> None:
        _atomic_write(self.root / "epochs" / f"e{record.epoch:08d}.json", record.to_json())


class MemorySource:
    """QCs and records held in this process: the in-process devnet's BFT chain and the
    node's unit tests publish here, and every node reads the same object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._qcs: dict[int, list[QC]] = {}
        self._records: dict[int, EpochRecord] = {}

    def publish_qc(self, qc: QC) -> None:
        with self._lock:
            self._qcs.setdefault(qc.epoch, []).append(qc)

    def publish_record(self, record: EpochRecord) -> None:
        with self._lock:
            self._records[record.epoch] = record

    def latest(self, epoch: int | None = None, max_round: int | None = None) -> QC | None:
        with self._lock:
            qcs = [q for e, qs in self._qcs.items() if epoch in (None, e) for q in qs]
        if max_round is not None:
            qcs = [q for q in qcs if q.round <= max_round]
        return max(qcs, key=lambda q: (q.epoch, q.round), default=None)

    def records(self) -> list[EpochRecord]:
        with self._lock:
            return [self._records[e] for e in sorted(self._records)]


class DirectorySource:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _names(self, sub: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.root / sub) if n.endswith(".json"))
        except FileNotFoundError:
            return []

    def latest(self, epoch: int | None = None, max_round: int | None = None) -> QC | None:
        names = self._names("qc")
        if epoch is not None:
            names = [n for n in names if n.startswith(f"e{epoch:08d}-")]
        if max_round is not None:
            names = [n for n in names if int(n[11:23]) <= max_round]
        for name in reversed(names):  # newest first; skip a file that does not parse
            try:
                path = self.root / "qc" / name
                if path.stat().st_size > MAX_FILE:
                    continue
                return QC.from_json(path.read_text())
            except (OSError, CheckpointError):
                continue
        return None

    def records(self) -> list[EpochRecord]:
        out = []
        for name in self._names("epochs"):
            try:
                out.append(EpochRecord.from_json((self.root / "epochs" / name).read_text()))
            except (OSError, CheckpointError):
                continue
        return out


class HttpSource:
    """GET {url}/qc/latest[?epoch=E] and {url}/epochs, as `serve_directory` answers."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=self.timeout) as resp:
                body = resp.read(MAX_FILE + 1)
        except OSError as exc:
            raise QCSourceError(f"BFT node at {self.url} unreachable: {exc}") from exc
        if len(body) > MAX_FILE:
            raise QCSourceError(f"{self.url}{path}: answer larger than {MAX_FILE} bytes")
        return json.loads(body)

    def latest(self, epoch: int | None = None, max_round: int | None = None) -> QC | None:
        query = "&".join(
            f"{k}={v}" for k, v in (("epoch", epoch), ("max_round", max_round)) if v is not None
        )
        data = self._get("/qc/latest" + (f"?{query}" if query else ""))
        return None if data is None else QC.from_json(data)

    def records(self) -> list[EpochRecord]:
        return [EpochRecord.from_json(r) for r in self._get("/epochs")]


def serve_directory(root: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve a QC directory over HTTP (what a BFT node's endpoint would answer)."""
    source = DirectorySource(root)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            if url.path == "/qc/latest":
                q = parse_qs(url.query)
                epoch, max_round = q.get("epoch", [None])[0], q.get("max_round", [None])[0]
                qc = source.latest(
                    int(epoch) if epoch is not None else None,
                    int(max_round) if max_round is not None else None,
                )
                body: Any = None if qc is None else qc.to_json()
            elif url.path == "/epochs":
                body = [r.to_json() for r in source.records()]
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def open_source(spec: str) -> QCSource:
    """A path, or an http:// URL."""
    if spec.startswith(("http://", "https://")):
        return HttpSource(spec)
    return DirectorySource(Path(spec))
