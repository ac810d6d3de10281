"""Validator-to-validator messages over TCP, each signed by the sender's BFT key.

Wire: one request per connection: u32be length + JSON, answered the same way.
A message is {"v", "type", "from", "epoch", "ts", "body", "sig"}; sig is the
sender's compact ECDSA over SHA256 of the canonical JSON without "sig", checked
against the sender's bft_pubkey in that epoch's record. Unknown or forged senders,
stale timestamps and replays are dropped (and logged by the caller).
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from bftanchor.bftsig import sign_compact, verify_compact
from bftanchor.epoch import EpochRecord, canonical_json
from bftanchor.errors import CheckpointError

VERSION = 1
MAX_MESSAGE = 4 * 1024 * 1024
MAX_SKEW = 300.0  # seconds a message's timestamp may differ from ours
TYPES = {"propose", "signatures", "refuse", "pending", "broadcast", "ping", "pong", "error"}


class PeerError(Exception):
    """A peer message was malformed, unauthenticated, or could not be exchanged."""


@dataclass(frozen=True)
class Message:
    type: str
    sender: str
    epoch: int
    body: dict[str, Any]
    ts: float

    def digest(self) -> bytes:
        return hashlib.sha256(canonical_json(self.unsigned()).encode()).digest()

    def unsigned(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "type": self.type,
            "from": self.sender,
            "epoch": self.epoch,
            "ts": self.ts,
            "body": self.body,
        }


def seal(msg_type: str, sender: str, epoch: int, body: dict[str, Any], secret: bytes) -> bytes:
    msg = Message(msg_type, sender, epoch, body, round(time.time(), 3))
    data = msg.unsigned()
    data["sig"] = sign_compact(secret, msg.digest()).hex()
    return json.dumps(data, separators=(",", ":")).encode()


class Authenticator:
    """Checks senders against the epoch records a node trusts, and drops replays."""

    def __init__(self, records: dict[int, EpochRecord], window: int = 4096) -> None:
        self.records = records
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._window = window
        self._lock = threading.Lock()

    def open(self, raw: bytes, now: float | None = None) -> Message:
        if len(raw) > MAX_MESSAGE:
            raise PeerError(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PeerError(f"message is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PeerError("message is not a JSON object")
        if data.get("v") != VERSION:
            raise PeerError(f"peer protocol version {data.get('v')!r}, we speak {VERSION}")
        try:
            msg = Message(
                str(data["type"]),
                str(data["from"]),
                int(data["epoch"]),
                dict(data["body"]),
                float(data["ts"]),
            )
            sig = bytes.fromhex(data["sig"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"message lacks or mangles a field: {exc!r}") from exc
        if msg.type not in TYPES:
            raise PeerError(f"unknown message type {msg.type!r}")
        record = self.records.get(msg.epoch)
        if record is None:
            raise PeerError(f"message from {msg.sender} names epoch {msg.epoch}, not held")
        member = next((v for v in record.validators if v.id == msg.sender), None)
        if member is None:
            raise PeerError(f"sender {msg.sender} is not a validator of epoch {msg.epoch}")
        digest = msg.digest()
        try:
            verify_compact(member.bft_pubkey, digest, sig)
        except CheckpointError as exc:
            raise PeerError(f"forged message claiming to be from {msg.sender}: {exc}") from exc
        now = time.time() if now is None else now
        if abs(now - msg.ts) > MAX_SKEW:
            raise PeerError(f"message from {msg.sender} is {now - msg.ts:.0f} s off our clock")
        with self._lock:
            if digest in self._seen:
                raise PeerError(f"replayed message from {msg.sender}")
            self._seen[digest] = None
            while len(self._seen) > self._window:
                self._seen.popitem(last=False)
        return msg


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise PeerError("connection closed mid-message")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", _read_exact(sock, 4))
    if length > MAX_MESSAGE:
        raise PeerError(f"peer announced {length} bytes, more than {MAX_MESSAGE}")
    return _read_exact(sock, length)


def write_frame(sock: socket.socket, data: bytes) -> None:
    if len(data) > MAX_MESSAGE:
        raise PeerError(f"refusing to send {len(data)} bytes (limit {MAX_MESSAGE})")
    sock.sendall(struct.pack(">I", len(data)) + data)


def exchange(host: str, port: int, data: bytes, timeout: float) -> bytes:
    """Send one message and wait for the answer (bounded by timeout)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            write_frame(sock, data)
            return read_frame(sock)
    except (OSError, struct.error) as exc:
        raise PeerError(f"{host}:{port}: {exc}") from exc
