"""Wire format of the node <-> appliance serial link, and its incremental decoder.

Everything that arrives on the serial line may be noise or hostile, so a frame
carries enough redundancy to be found, bounded, checked and authenticated
before anyone looks at its payload.

Layout (all integers big-endian)::

    offset  size  field
    0       2     sync/magic  0xFE 0xA5
    2       1     protocol version (PROTOCOL_VERSION = 1)
    3       1     frame type (the message type; opaque to this module)
    4       1     flags: bit 0 = an HMAC tag follows; bits 1-7 must be zero
    5       4     request id (u32)
    9       4     payload length n (u32), at most the decoder's max_payload
    13      4     header CRC32 (zlib.crc32) of bytes 0..12
    17      n     payload
    17+n    4     frame CRC32 of bytes 0..16+n (header, header CRC and payload)
    21+n    32    HMAC-SHA256(pairing secret, bytes 0..20+n), only if flags bit 0

Why this shape:

- 0xFE never occurs in UTF-8, so the magic can never appear inside a JSON
  payload: after noise the decoder resynchronises by scanning for the magic.
- The 17-byte header has its own CRC, so a corrupted length is caught before
  the decoder waits for (or buffers) a payload, and the length is checked
  against max_payload before a single payload byte is kept.
- The header (bytes 0..16) is version-invariant: every future version keeps
  magic, version, type, flags, request id, length and header CRC where they
  are. A frame of another version is therefore recognised by its valid header
  CRC and reported as a VersionMismatch, distinct from noise, with the peer's
  request id so the receiver can answer it.
- The HMAC flag is on the wire (not only in configuration) so that a paired
  side meeting an unpaired one, or the reverse, reports a clear AuthFailure
  instead of misparsing the frame.

The decoder never raises on input: every problem is a typed event in the list
that `FrameDecoder.feed` returns, next to the good frames, in stream order.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = b"\xfe\xa5"
PROTOCOL_VERSION = 1
DEFAULT_MAX_PAYLOAD = 1 << 20  # 1 MiB
DEFAULT_FRAME_TIMEOUT = 2.0  # seconds of line silence that abandon a half frame
MIN_SECRET_LEN = 16

FLAG_HMAC = 0x01
KNOWN_FLAGS = FLAG_HMAC

_HEADER = struct.Struct(">2sBBBII")  # magic, version, type, flags, request id, length
HEADER_LEN = _HEADER.size + 4  # 17: the fields above plus the header CRC
CRC_LEN = 4
TAG_LEN = 32
MAX_U32 = 0xFFFFFFFF


class FrameError(ValueError):
    """A frame cannot be built from these values (raised by encode_frame only)."""


@dataclass(frozen=True)
class Frame:
    """A complete frame that passed the CRCs and, on a paired link, the HMAC."""

    frame_type: int
    request_id: int
    payload: bytes
    version: int = PROTOCOL_VERSION
    authenticated: bool = False


class DecodeEvent:
    """Something the decoder rejected or skipped; `message` says what, for people.

    Each event class sets `_template`: the message, formatted with the event as `self`.
    """

    _template = ""

    @property
    def message(self) -> str:
        return self._template.format(self=self) or type(self).__name__


@dataclass(frozen=True)
class NoiseSkipped(DecodeEvent):
    """Bytes discarded while hunting for the next sync (garbage, false syncs)."""

    nbytes: int

    _template = "skipped {self.nbytes} byte(s) of noise"


@dataclass(frozen=True)
class FrameProblem(DecodeEvent):
    """A frame whose header was intact (header CRC good) but that was refused.

    frame_type and request_id come from that CRC-checked header, so a server
    can address an error reply to the sender, but they are not authenticated.
    """

    frame_type: int
    request_id: int


@dataclass(frozen=True)
class CrcMismatch(FrameProblem):
    """The frame CRC did not match: the payload or trailer was corrupted or cut."""

    length: int

    _template = "frame CRC mismatch (request id {self.request_id:#010x}, {self.length} bytes)"


@dataclass(frozen=True)
class AuthFailure(FrameProblem):
    """The pairing check failed: bad tag, missing tag, or a tag we cannot check."""

    reason: str

    _template = "pairing authentication failed: {self.reason}"


@dataclass(frozen=True)
class VersionMismatch(FrameProblem):
    """The peer speaks another protocol version; its frame was not parsed further."""

    peer_version: int
    our_version: int

    _template = (
        "protocol version mismatch: peer speaks v{self.peer_version}, "
        "we speak v{self.our_version}"
    )


@dataclass(frozen=True)
class OversizeFrame(FrameProblem):
    """The header announced more payload than allowed; none of it was buffered."""

    length: int
    limit: int

    _template = "frame payload of {self.length} bytes exceeds the limit of {self.limit}"


@dataclass(frozen=True)
class MalformedHeader(FrameProblem):
    """A header of our version with a field this version does not define."""

    reason: str

    _template = "malformed frame header: {self.reason}"


@dataclass(frozen=True)
class FrameTimeout(DecodeEvent):
    """A half frame was dropped because the line went quiet before it completed."""

    nbytes: int

    _template = "dropped a half frame of {self.nbytes} byte(s) after the line went quiet"


def _check_secret(secret: bytes | None) -> bytes | None:
    if secret is None:
        return None
    if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_SECRET_LEN:
        raise FrameError(f"pairing secret must be at least {MIN_SECRET_LEN} bytes")
    return bytes(secret)


def _tag(secret: bytes, data: bytes | bytearray) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def _crc(data: bytes) -> bytes:
    return struct.pack(">I", zlib.crc32(data))


def encode_header(
    frame_type: int,
    request_id: int,
    length: int,
    *,
    flags: int = 0,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """The 17-byte header (fields and header CRC), unchecked: encode_frame checks the
    values it passes, and tests build headers this version refuses."""
    fields = _HEADER.pack(MAGIC, version, frame_type, flags, request_id, length)
    return fields + _crc(fields)


def encode_frame(
    frame_type: int,
    request_id: int,
    payload: bytes,
    *,
    secret: bytes | None = None,
    version: int = PROTOCOL_VERSION,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """Build one frame; with `secret` it carries the pairing HMAC tag."""
    secret = _check_secret(secret)
    for name, value, top in (
        ("frame_type", frame_type, 0xFF),
        ("version", version, 0xFF),
        ("request_id", request_id, MAX_U32),
    ):
        if not isinstance(value, int) or not 0 <= value <= top:
            raise FrameError(f"{name} must be an integer in [0, {top}], got {value!r}")
    if len(payload) > max_payload:
        raise FrameError(f"payload of {len(payload)} bytes exceeds the limit of {max_payload}")
    flags = FLAG_HMAC if secret is not None else 0
    body = encode_header(frame_type, request_id, len(payload), flags=flags, version=version)
    body += bytes(payload)
    out = body + _crc(body)
    if secret is not None:
        out += _tag(secret, out)
    return out


@dataclass(frozen=True)
class _Header:
    version: int
    frame_type: int
    flags: int
    request_id: int
    length: int


def _parse_header(buf: bytearray, pos: int) -> _Header | None:
    """The header at `pos` if its CRC holds (caller ensures HEADER_LEN bytes)."""
    fields = bytes(buf[pos : pos + _HEADER.size])
    (crc,) = struct.unpack_from(">I", buf, pos + _HEADER.size)
    if zlib.crc32(fields) != crc:
        return None
    _magic, version, frame_type, flags, request_id, length = _HEADER.unpack(fields)
    return _Header(version, frame_type, flags, request_id, length)


class FrameDecoder:
    """Turns a byte stream into Frames and DecodeEvents, in stream order.

    feed() never raises on any input. Memory stays bounded by one frame of at
    most max_payload bytes plus whatever a single feed() call hands in.

    Half frames: a reader calls feed(b"") when a read timed out with nothing
    (the line is quiet). If the buffer then holds a partial frame and no byte
    has arrived for more than frame_timeout seconds, the partial frame is
    dropped and the rest of the buffer rescanned. Only a quiet line expires a
    frame: a long gap between two non-empty feeds can just mean the reader was
    busy (the appliance signing) while the bytes waited in the OS buffer.
    """

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        version: int = PROTOCOL_VERSION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= max_payload <= MAX_U32:
            raise FrameError(f"max_payload must be in [0, {MAX_U32}]")
        self.secret = _check_secret(secret)
        self.max_payload = max_payload
        self.frame_timeout = frame_timeout
        self.version = version
        self._clock = clock
        self._buf = bytearray()
        self._last_rx = clock()

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (for tests and diagnostics)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | DecodeEvent]:
        out: list[Frame | DecodeEvent] = []
        now = self._clock()
        if data:
            self._last_rx = now
            self._buf += data
            self._scan(out)
        elif self._buf and now - self._last_rx > self.frame_timeout:
            self._scan(out, quiet=True)  # every buffered byte is stale
        return out

    def reset(self) -> None:
        """Forget any buffered partial frame."""
        self._buf.clear()

    def _scan(self, out: list[Frame | DecodeEvent], *, quiet: bool = False) -> None:
        """Decode what the buffer holds, in one pass with one final trim.

        An incomplete frame at the end is kept for the next feed, unless the
        line is `quiet` (expired): then it is dropped and the scan goes on one
        byte later, so complete frames inside what it claimed still come out.
        """
        buf = self._buf
        pos = 0
        noise = 0
        expired = False

        def emit(item: Frame | DecodeEvent) -> None:
            nonlocal noise
            if noise:
                out.append(NoiseSkipped(noise))
                noise = 0
            out.append(item)

        while True:
            sync = buf.find(MAGIC, pos)
            if sync < 0:
                # Keep a trailing first magic byte: the sync may be split across feeds.
                keep = 1 if not quiet and pos < len(buf) and buf[-1] == MAGIC[0] else 0
                noise += len(buf) - keep - pos
                pos = len(buf) - keep
                break
            noise += sync - pos
            pos = sync
            if len(buf) - pos >= HEADER_LEN:
                header = _parse_header(buf, pos)
                if header is None:  # a false sync or a corrupted header
                    noise += 1
                    pos += 1
                    continue
                problem = self._header_problem(header)
                if problem is not None:
                    emit(problem)
                    pos += HEADER_LEN  # resync after it; never wait for its payload
                    continue
                end_of_crc = pos + HEADER_LEN + header.length + CRC_LEN
                end = end_of_crc + (TAG_LEN if header.flags & FLAG_HMAC else 0)
                if len(buf) >= end:
                    event = self._check_body(buf, pos, header, end_of_crc, end)
                    emit(event)
                    # A refused frame may have been cut short (lost bytes, a sender
                    # reset mid-frame), so the next frame may start inside what its
                    # header claimed: rescan from just after the header.
                    pos = end if isinstance(event, Frame) else pos + HEADER_LEN
                    continue
            if not quiet:
                break  # wait for the rest of this frame
            if expired:
                noise += 1  # a later stale candidate: just more of the dropped bytes
            else:
                emit(FrameTimeout(len(buf) - pos))
                expired = True
            pos += 1
        if noise:
            out.append(NoiseSkipped(noise))
        del buf[:pos]

    def _header_problem(self, h: _Header) -> FrameProblem | None:
        if h.version != self.version:
            return VersionMismatch(h.frame_type, h.request_id, h.version, self.version)
        if h.flags & ~KNOWN_FLAGS:
            return MalformedHeader(h.frame_type, h.request_id, f"unknown flags {h.flags:#04x}")
        if h.length > self.max_payload:
            return OversizeFrame(h.frame_type, h.request_id, h.length, self.max_payload)
        return None

    def _check_body(
        self, buf: bytearray, pos: int, h: _Header, end_of_crc: int, end: int
    ) -> Frame | FrameProblem:
        crc_at = end_of_crc - CRC_LEN
        (crc,) = struct.unpack_from(">I", buf, crc_at)
        if zlib.crc32(buf[pos:crc_at]) != crc:
            return CrcMismatch(h.frame_type, h.request_id, h.length)
        has_tag = bool(h.flags & FLAG_HMAC)
        if self.secret is not None and not has_tag:
            return AuthFailure(
                h.frame_type, h.request_id, "peer sent an unauthenticated frame on a paired link"
            )
        if self.secret is None and has_tag:
            return AuthFailure(
                h.frame_type,
                h.request_id,
                "peer is paired (its frame carries an HMAC tag) but this side has no secret",
            )
        if self.secret is not None:
            expected = _tag(self.secret, buf[pos:end_of_crc])
            if not hmac.compare_digest(expected, bytes(buf[end_of_crc:end])):
                return AuthFailure(
                    h.frame_type, h.request_id, "HMAC tag does not match (wrong pairing secret?)"
                )
        payload = bytes(buf[pos + HEADER_LEN : crc_at])
        return Frame(h.frame_type, h.request_id, payload, h.version, self.secret is not None)
