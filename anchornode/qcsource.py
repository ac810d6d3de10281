"""Where a node gets QCs and epoch records from its BFT node.

Two sources: a directory the BFT node writes files into (atomically: write a
temporary file, then rename), and an HTTP endpoint serving the same content. The
devnet's simulated chain writes a directory; `bftanchor.publish.serve_http` serves one
over HTTP.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from bftanchor.epoch import EpochRecord
from bftanchor.publish import MAX_FILE, latest_qc, qc_file_name, read_records, record_file_name
from bftanchor.qc import QC


class QCSourceError(Exception):
    pass


class QCSource(Protocol):
    def latest(self, epoch: int | None = None, max_round: int | None = None) -> QC | None: ...

    def records(self) -> list[EpochRecord]: ...


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
        _atomic_write(self.root / "qc" / qc_file_name(qc.epoch, qc.round), qc.to_json())

    def publish_record(self, record: EpochRecord) -> None:
        _atomic_write(self.root / "epochs" / record_file_name(record.epoch), record.to_json())


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
    """A directory the BFT node publishes into (bftanchor.publish's layout)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def latest(self, epoch: int | None = None, max_round: int | None = None) -> QC | None:
        return latest_qc(self.root, epoch, max_round)

    def records(self) -> list[EpochRecord]:
        return read_records(self.root)


class HttpSource:
    """GET {url}/qc/latest[?epoch=E] and {url}/epochs, as `bftanchor.publish.serve_http` answers."""

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


def open_source(spec: str) -> QCSource:
    """A path, or an http:// URL."""
    if spec.startswith(("http://", "https://")):
        return HttpSource(spec)
    return DirectorySource(Path(spec))
