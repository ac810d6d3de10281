"""The publisher API for a BFT chain's engineers: what their node calls to feed anchoring.

A BFT node publishes two things in the project's JSON (docs/bft-chain.md):
- every committed round's quorum certificate (QC), and
- every epoch's record, certified by the previous epoch's quorum.
`Publisher` checks each before writing it (a QC must verify against its epoch's record
and lie in its round range; a record must be certified by the previous one), then
writes it atomically into a directory that bft-anchor nodes read, and
`serve_http` serves that directory as the HTTP endpoint nodes can read instead.

Helpers build what the formats need: `next_record` (the next epoch's record from the
validators' key shares), `certify` (the old quorum signing it), `sign_vote` (a
validator's QC vote) and `make_qc`.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from bftanchor.bftsig import sign_compact
from bftanchor.epoch import EpochRecord, verify_certificate
from bftanchor.errors import CheckpointError, EpochRecordError, QCError
from bftanchor.qc import QC, VoteInfo, signed_digest, verify_qc
from bftanchor.share import KeyShare, ShareError, build_record

MAX_FILE = 1024 * 1024


def qc_file_name(epoch: int, round: int) -> str:
    """qc/e<epoch, 8 digits>-r<round, 12 digits>.json: names sort by (epoch, round)."""
    return f"e{epoch:08d}-r{round:012d}.json"


def record_file_name(epoch: int) -> str:
    return f"e{epoch:08d}.json"


def sign_vote(secret: bytes, commit_state_id: bytes, vote: VoteInfo) -> bytes:
    """One validator's 64-byte signature over SHA256(commit_state_id || vote_info_hash)."""
    return sign_compact(secret, signed_digest(commit_state_id, vote.hash()))


def make_qc(vote: VoteInfo, commit_state_id: bytes, signatures: dict[str, bytes]) -> QC:
    return QC(vote, commit_state_id, vote.hash(), tuple(sorted(signatures.items())))


def certify(record: EpochRecord, secrets_by_id: dict[str, bytes]) -> EpochRecord:
    """The record with the given previous-epoch validators' certificate signatures added."""
    digest = record.certificate_digest()
    cert = dict(record.certificate)
    cert.update({vid: sign_compact(s, digest) for vid, s in secrets_by_id.items()})
    return record.with_certificate(cert)


def next_record(previous: EpochRecord, shares: list[KeyShare], length: int) -> EpochRecord:
    """The next epoch's record (uncertified) from its validators' key shares.

    Each validator runs `bft-anchor appliance share --epoch E+1` on its appliance and hands
    the share to the BFT chain; the record starts right after `previous` ends and lasts
    `length` rounds. The chain's quorum of epoch E then signs it with `certify`.
    """
    if not shares:
        raise ShareError("no shares given")
    return build_record(shares, shares[0].chain, previous.epoch + 1, previous.end_round + 1,
                        length, shares[0].script)


def _atomic_write(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Publisher:
    """Write QCs and certified epoch records into a directory, checking each first.

    root/epochs/e<epoch>.json and root/qc/e<epoch>-r<round>.json; files are replaced
    atomically (write, fsync, rename), so a reader never sees half a file.
    """

    def __init__(self, root: Path, epoch0: EpochRecord | None = None) -> None:
        self.root = Path(root)
        (self.root / "qc").mkdir(parents=True, exist_ok=True)
        (self.root / "epochs").mkdir(parents=True, exist_ok=True)
        self.records: dict[int, EpochRecord] = {}
        for name in sorted(os.listdir(self.root / "epochs")):
            if name.endswith(".json"):
                r = EpochRecord.from_json((self.root / "epochs" / name).read_text())
                self.records[r.epoch] = r
        if epoch0 is not None:
            self.publish_record(epoch0)

    def publish_record(self, record: EpochRecord | dict[str, Any]) -> EpochRecord:
        if not isinstance(record, EpochRecord):
            record = EpochRecord.from_json(record)
        held = self.records.get(record.epoch)
        if held is not None:
            if held.body_json() != record.body_json():
                raise EpochRecordError(f"epoch {record.epoch} is already published differently")
            return held
        if record.epoch > 0:
            prev = self.records.get(record.epoch - 1)
            if prev is None:
                raise EpochRecordError(
                    f"publish epoch {record.epoch - 1} before epoch {record.epoch}"
                )
            verify_certificate(record, prev)
        elif record.certificate:
            raise EpochRecordError("epoch 0 carries an empty certificate")
        _atomic_write(self.root / "epochs" / record_file_name(record.epoch), record.to_json())
        self.records[record.epoch] = record
        return record

    def publish_qc(self, qc: QC | dict[str, Any]) -> QC:
        if not isinstance(qc, QC):
            qc = QC.from_json(qc)
        record = self.records.get(qc.epoch)
        if record is None:
            raise QCError(f"publish epoch {qc.epoch}'s record before its QCs")
        if not record.start_round <= qc.round <= record.end_round:
            raise QCError(f"QC round {qc.round} is outside epoch {qc.epoch}'s rounds "
                          f"{record.start_round}..{record.end_round}")
        verify_qc(qc, record)
        _atomic_write(self.root / "qc" / qc_file_name(qc.epoch, qc.round), qc.to_json())
        return qc

    def prune_qcs(self, keep: int = 1000) -> int:
        """Delete all but the newest `keep` QC files (nodes only ever want recent ones)."""
        names = sorted(n for n in os.listdir(self.root / "qc") if n.endswith(".json"))
        old = names[:-keep] if keep > 0 else names
        for n in old:
            (self.root / "qc" / n).unlink(missing_ok=True)
        return len(old)


def _names(root: Path, sub: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(root / sub) if n.endswith(".json"))
    except FileNotFoundError:
        return []


def latest_qc(root: Path, epoch: int | None = None, max_round: int | None = None) -> QC | None:
    """The newest QC in a published directory (of `epoch`, at most `max_round`); a file
    that is too large or does not parse is skipped."""
    names = _names(root, "qc")
    if epoch is not None:
        names = [n for n in names if n.startswith(f"e{epoch:08d}-")]
    if max_round is not None:
        names = [n for n in names if int(n[11:23]) <= max_round]
    for name in reversed(names):  # newest first
        try:
            path = root / "qc" / name
            if path.stat().st_size > MAX_FILE:
                continue
            return QC.from_json(path.read_text())
        except (OSError, CheckpointError):
            continue
    return None


def read_records(root: Path) -> list[EpochRecord]:
    """The epoch records in a published directory, by epoch; unreadable ones skipped."""
    out = []
    for name in _names(root, "epochs"):
        try:
            out.append(EpochRecord.from_json((root / "epochs" / name).read_text()))
        except (OSError, CheckpointError):
            continue
    return out


def serve_http(root: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve a published directory: GET /qc/latest[?epoch=E&max_round=R] and GET /epochs.

    /qc/latest answers the newest QC (JSON, or null); /epochs the list of records. Run it
    behind the BFT node's usual TLS/reverse proxy; it only reads the directory.
    """
    root = Path(root)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            try:
                q = parse_qs(url.query)
                epoch = int(q["epoch"][0]) if "epoch" in q else None
                max_round = int(q["max_round"][0]) if "max_round" in q else None
            except ValueError:
                self.send_error(400, "epoch and max_round are integers")
                return
            if url.path == "/qc/latest":
                qc = latest_qc(root, epoch, max_round)
                body: Any = None if qc is None else qc.to_json()
            elif url.path == "/epochs":
                body = [r.to_json() for r in read_records(root)]
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
    # shutdown() waits for the loop's next poll: 0.1 s, not socketserver's 0.5 s.
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    return server
