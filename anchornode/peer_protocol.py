"""Validator-to-validator messages over TCP, each signed by the sender's BFT key.

Wire (version 2), one request per connection, answered the same way:

    u32be H | header: H bytes of JSON (H <= MAX_HEADER) | body: header["len"] bytes of JSON

header = {"v": 2, "type", "from", "epoch", "ts_ms", "len", "body_sha256", "sig"}; sig is
the sender's compact ECDSA over SHA256 of the header's canonical JSON without "sig",
checked against the sender's bft_pubkey in that epoch's record. The header is small
and signed, and binds the body by its hash, so a receiver knows who sent a message
before it buffers more than MAX_HEADER bytes of it: a stranger can cost it 2 KiB,
never a body. Unknown or forged senders, stale timestamps and replays are refused;
the replay cache outlives a restart when given a file.

JSON from the wire is parsed strictly: no NaN/Infinity, no float that overflows
(1e400), no nesting deeper than MAX_DEPTH; each is a PeerError, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bftanchor.bftsig import sign_compact, verify_compact
from bftanchor.epoch import EpochRecord, canonical_json
from bftanchor.errors import CheckpointError

VERSION = 2
MAX_HEADER = 2048
MAX_BODY = 1024 * 1024
MAX_MESSAGE = MAX_HEADER + MAX_BODY  # what one frame may hold, header and body
MAX_DEPTH = 16
MAX_SKEW = 300.0  # seconds a message's timestamp may differ from ours
TYPES = {"propose", "signatures", "refuse", "pending", "broadcast", "ping", "pong", "error"}
HEADER_KEYS = {"v", "type", "from", "epoch", "ts_ms", "len", "body_sha256", "sig"}


class PeerError(Exception):
    """A peer message was malformed, unauthenticated, or could not be exchanged."""


@dataclass(frozen=True)
class Message:
    type: str
    sender: str
    epoch: int
    body: dict[str, Any]
    ts: float


# --- strict JSON -------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is too large")
    return value


def _depth(obj: Any) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads(data: bytes, what: str) -> Any:
    """JSON from a peer: strict numbers, bounded depth; PeerError naming what is wrong."""
    try:
        obj = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise PeerError(f"{what} is nested too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PeerError(f"{what} is not JSON: {str(exc)[:80]}") from None
    if _depth(obj) > MAX_DEPTH:
        raise PeerError(f"{what} is nested too deep (more than {MAX_DEPTH} levels)")
    return obj


# --- sealing and opening -------------------------------------------------------------------


def _header_digest(header: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in header.items() if k != "sig"}
    return hashlib.sha256(canonical_json(unsigned).encode()).digest()


def seal(msg_type: str, sender: str, epoch: int, body: dict[str, Any], secret: bytes) -> bytes:
    """One whole frame: length, signed header, body."""
    raw = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    header: dict[str, Any] = {
        "v": VERSION,
        "type": msg_type,
        "from": sender,
        "epoch": epoch,
        "ts_ms": int(time.time() * 1000),
        "len": len(raw),
        "body_sha256": hashlib.sha256(raw).hexdigest(),
    }
    header["sig"] = sign_compact(secret, _header_digest(header)).hex()
    head = canonical_json(header).encode()
    return struct.pack(">I", len(head)) + head + raw


def split_frame(frame: bytes) -> tuple[bytes, bytes]:
    """(header, body) of a whole frame, checking only the lengths."""
    if len(frame) < 4:
        raise PeerError("frame shorter than its length prefix")
    (h,) = struct.unpack(">I", frame[:4])
    if h > MAX_HEADER:
        raise PeerError(f"header of {h} bytes exceeds {MAX_HEADER}")
    return frame[4 : 4 + h], frame[4 + h :]


def unverified(frame: bytes) -> dict[str, Any]:
    """A frame's header with its body, NOT authenticated: for tests and diagnostics."""
    head, body = split_frame(frame)
    return dict(loads(head, "header"), body=loads(body, "body"))


class ReplayCache:
    """Digests of messages accepted within the clock window, optionally in SQLite.

    A message older than MAX_SKEW is refused by its timestamp, so only the window
    needs remembering; with a file that memory survives a restart. Each sender may
    have at most per_sender entries in the window (a flood from one validator is
    refused, it does not push out the others' entries).
    """

    def __init__(self, path: Path | None = None, per_sender: int = 20_000) -> None:
        self.per_sender = per_sender
        self._lock = threading.Lock()
        self._mem: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._counts: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS seen (digest BLOB PRIMARY KEY, sender TEXT, ts REAL)"
            )
            self._expire_db(time.time())
            for digest, sender, ts in self._db.execute(
                "SELECT digest, sender, ts FROM seen ORDER BY ts"
            ):
                self._remember(bytes(digest), sender, ts)

    def _remember(self, digest: bytes, sender: str, ts: float) -> None:
        self._mem[digest] = (sender, ts)
        self._counts[sender] = self._counts.get(sender, 0) + 1

    def _expire_db(self, now: float) -> None:
        if self._db is not None:
            self._db.execute("DELETE FROM seen WHERE ts < ?", (now - 2 * MAX_SKEW,))

    def _expire(self, now: float) -> None:
        while self._mem:
            digest, (sender, ts) = next(iter(self._mem.items()))
            if ts >= now - 2 * MAX_SKEW:
                break
            self._mem.popitem(last=False)
            self._counts[sender] -= 1

    def seen(self, digest: bytes) -> bool:
        with self._lock:
            return digest in self._mem

    def add(self, digest: bytes, sender: str, ts: float, now: float) -> None:
        """Record an accepted message; PeerError if it was seen or the sender floods."""
        with self._lock:
            self._expire(now)
            if digest in self._mem:
                raise PeerError(f"replayed message from {sender}")
            if self._counts.get(sender, 0) >= self.per_sender:
                raise PeerError(f"{sender} sent more than {self.per_sender} messages in "
                                f"{2 * MAX_SKEW:.0f} s: refused")
            self._remember(digest, sender, max(ts, now))
            if self._db is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", (digest, sender, max(ts, now))
                )
                if len(self._mem) % 1000 == 0:
                    self._expire_db(now)

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


@dataclass(frozen=True)
class Header:
    type: str
    sender: str
    epoch: int
    ts: float
    length: int
    body_sha256: str
    digest: bytes


class Authenticator:
    """Checks senders against the epoch records a node trusts, and refuses replays."""

    def __init__(self, records: dict[int, EpochRecord], replay: ReplayCache | None = None) -> None:
        self.records = records
        self.replay = replay if replay is not None else ReplayCache()

    def open_header(self, raw: bytes, now: float | None = None) -> Header:
        """Authenticate a header (at most MAX_HEADER bytes) before any body is read."""
        if len(raw) > MAX_HEADER:
            raise PeerError(f"header of {len(raw)} bytes exceeds {MAX_HEADER}")
        data = loads(raw, "message header")
        if not isinstance(data, dict):
            raise PeerError("message header is not a JSON object")
        if data.get("v") != VERSION:
            raise PeerError(f"peer protocol version {str(data.get('v'))[:20]!r}, "
                            f"we speak {VERSION}")
        if set(data) != HEADER_KEYS:
            missing, extra = HEADER_KEYS - set(data), set(data) - HEADER_KEYS
            raise PeerError(f"message header lacks {sorted(missing)} or has extra "
                            f"{sorted(extra)[:5]} fields")
        try:
            types_ok = all(isinstance(data[k], str) for k in ("type", "from", "body_sha256", "sig"))
            ints_ok = all(
                isinstance(data[k], int) and not isinstance(data[k], bool) and data[k] >= 0
                for k in ("epoch", "ts_ms", "len")
            )
            if not (types_ok and ints_ok):
                raise ValueError("a field has the wrong type")
            sig = bytes.fromhex(data["sig"])
            if len(bytes.fromhex(data["body_sha256"])) != 32:
                raise ValueError("body_sha256 is not 32 bytes")
        except ValueError as exc:
            raise PeerError(f"message header mangles a field: {exc}") from None
        sender, epoch = data["from"], data["epoch"]
        if data["type"] not in TYPES:
            raise PeerError(f"unknown message type {data['type'][:20]!r}")
        if data["len"] > MAX_BODY:
            raise PeerError(f"body of {data['len']} bytes exceeds {MAX_BODY}")
        record = self.records.get(epoch)
        if record is None:
            raise PeerError(f"message names epoch {epoch}, not held")
        member = next((v for v in record.validators if v.id == sender), None)
        if member is None:
            raise PeerError(f"sender {sender[:40]!r} is not a validator of epoch {epoch}")
        digest = _header_digest(data)
        try:
            verify_compact(member.bft_pubkey, digest, sig)
        except CheckpointError as exc:
            raise PeerError(f"forged message claiming to be from {sender}: {exc}") from exc
        ts = data["ts_ms"] / 1000
        now = time.time() if now is None else now
        if abs(now - ts) > MAX_SKEW:
            raise PeerError(f"message from {sender} is {now - ts:.0f} s off our clock")
        if self.replay.seen(digest):
            raise PeerError(f"replayed message from {sender}")
        return Header(data["type"], sender, epoch, ts, data["len"], data["body_sha256"], digest)

    def open_body(self, header: Header, raw: bytes, now: float | None = None) -> Message:
        """Check the body against its authenticated header; only then remember the digest."""
        if len(raw) != header.length or hashlib.sha256(raw).hexdigest() != header.body_sha256:
            raise PeerError(f"body from {header.sender} does not match its signed header")
        body = loads(raw, f"body from {header.sender}")
        if not isinstance(body, dict):
            raise PeerError(f"body from {header.sender} is not a JSON object")
        now = time.time() if now is None else now
        self.replay.add(header.digest, header.sender, header.ts, now)
        return Message(header.type, header.sender, header.epoch, body, header.ts)

    def open(self, frame: bytes, now: float | None = None) -> Message:
        """A whole frame (e.g. a reply already read by exchange())."""
        if len(frame) > 4 + MAX_MESSAGE:
            raise PeerError(f"message of {len(frame)} bytes exceeds {MAX_MESSAGE}")
        head, body = split_frame(frame)
        return self.open_body(self.open_header(head, now), body, now)

    def receive(
        self, sock: socket.socket, header_within: float = 2.0, now: float | None = None
    ) -> Message:
        """Read one message from a socket: the header (all of it within header_within
        seconds, so a stranger holds a connection that long at most), authenticated,
        then its body (under the socket's own timeout)."""
        deadline = time.monotonic() + header_within
        (h,) = struct.unpack(">I", _read_exact(sock, 4, deadline))
        if h > MAX_HEADER:
            raise PeerError(f"peer announced a header of {h} bytes, more than {MAX_HEADER}")
        header = self.open_header(_read_exact(sock, h, deadline), now)
        return self.open_body(header, _read_exact(sock, header.length), now)


def _read_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    buf = bytearray()
    timeout = sock.gettimeout()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError("peer too slow to send a message header")
            sock.settimeout(left if timeout is None else min(left, timeout))
        chunk = sock.recv(min(n - len(buf), 65536))
        if not chunk:
            raise PeerError("connection closed mid-message")
        buf += chunk
    if deadline is not None:
        sock.settimeout(timeout)
    return bytes(buf)


def read_frame(sock: socket.socket) -> bytes:
    """A whole frame, lengths checked but nothing authenticated (the initiator reading a
    reply it asked for: the length is bounded by MAX_BODY)."""
    prefix = _read_exact(sock, 4)
    (h,) = struct.unpack(">I", prefix)
    if h > MAX_HEADER:
        raise PeerError(f"peer announced a header of {h} bytes, more than {MAX_HEADER}")
    head = _read_exact(sock, h)
    try:
        length = int(loads(head, "reply header")["len"])
    except (PeerError, KeyError, TypeError, ValueError) as exc:
        raise PeerError(f"reply header unreadable: {exc}") from None
    if not 0 <= length <= MAX_BODY:
        raise PeerError(f"peer announced a body of {length} bytes, more than {MAX_BODY}")
    return prefix + head + _read_exact(sock, length)


def write_frame(sock: socket.socket, frame: bytes) -> None:
    if len(frame) > 4 + MAX_MESSAGE:
        raise PeerError(f"refusing to send {len(frame)} bytes (limit {MAX_MESSAGE})")
    sock.sendall(frame)


def exchange(host: str, port: int, data: bytes, timeout: float) -> bytes:
    """Send one sealed frame and wait for the answer's frame (bounded by timeout)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            write_frame(sock, data)
            return read_frame(sock)
    except (OSError, struct.error) as exc:
        raise PeerError(f"{host}:{port}: {exc}") from exc
