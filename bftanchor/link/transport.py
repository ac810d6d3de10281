"""Request/reply over a serial port: LinkEndpoint, LinkClient (node), LinkServer (appliance).

Request ids are random 32-bit values (never 0), drawn fresh for each request
and kept across its retries. Not a counter, because the node may restart at
any time without state: a counter restarting at 1 would collide with ids the
appliance still remembers and be answered with a stale cached reply.

Replay protection (per LinkServer instance, i.e. per appliance session): the
server remembers the last `reply_cache_size` replies and the last `seen_ids`
request ids, each with a SHA-256 of (type, payload). A request id seen again
with the same content is a retry or a replay: it is answered from the cache,
byte for byte, without running the handler again (or refused with
`replayed_request` once its reply has left the cache). The same id with other
content is refused with `request_id_reused` (the client then draws a new id).
This is defence in depth: on a paired link an attacker cannot forge frames, only
replay them, and the appliance's journal is what durably stops equivocation.

The server never answers a frame whose type is a reply type, so two endpoints
(or an echoing line) cannot ping-pong.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import serial

from bftanchor.link.frame import (
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_MAX_PAYLOAD,
    PROTOCOL_VERSION,
    AuthFailure,
    CrcMismatch,
    DecodeEvent,
    Frame,
    FrameDecoder,
    FrameError,
    FrameProblem,
    FrameTimeout,
    MalformedHeader,
    NoiseSkipped,
    OversizeFrame,
    VersionMismatch,
    encode_frame,
)
from bftanchor.link.messages import (
    ALLOWED_REPLIES,
    REPLY_TYPES,
    REQUEST_TYPES,
    ErrorCode,
    MessageError,
    MsgType,
    decode_payload,
    encode_payload,
    msg_type_of,
)

log = logging.getLogger(__name__)

READ_CHUNK = 65536
DEFAULT_POLL_INTERVAL = 0.05


class LinkError(Exception):
    """Base of the errors a LinkClient raises."""


class LinkTimeout(LinkError):
    """No reply within the per-attempt timeout, after every retry."""


class LinkVersionMismatch(LinkError):
    """The peer speaks another protocol version."""


class LinkAuthError(LinkError):
    """Pairing authentication failed: wrong secret, or one side is not paired."""


class LinkProtocolError(LinkError):
    """The peer's reply was malformed or not a valid answer to the request."""


class LinkRemoteError(LinkError):
    """The peer answered with an ERROR message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"appliance error {code}: {message}")
        self.code = code
        self.remote_message = message


class SerialLike(Protocol):
    """What the link needs of a port: pyserial's Serial, loop://, a pty end."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Message:
    """A valid, typed message received on the link."""

    type: MsgType
    request_id: int
    payload: dict[str, Any]
    raw: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class BadMessage(FrameProblem):
    """An intact (and, if paired, authenticated) frame whose payload is invalid."""

    error: str
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def message(self) -> str:
        return f"invalid message (request id {self.request_id:#010x}): {self.error}"


Received = Message | DecodeEvent


def open_serial(
    port: str,
    baudrate: int = 115200,
    timeout: float = DEFAULT_POLL_INTERVAL,
    *,
    exclusive: bool = True,
    write_timeout: float | None = None,
) -> serial.SerialBase:
    """Open a serial device, a pyserial URL ("loop://"), or "fd:<n>" (an inherited pty master).

    exclusive=True takes an advisory lock on a device path so a second process
    (or ModemManager) cannot talk on the same line.
    """
    if port.startswith("fd:"):
        from bftanchor.link.pty import PtyMasterSerial

        return PtyMasterSerial(int(port[3:]), timeout=timeout)
    kwargs: dict[str, Any] = {"baudrate": baudrate, "timeout": timeout}
    kwargs["write_timeout"] = write_timeout
    if "://" not in port and exclusive:
        kwargs["exclusive"] = True
    return serial.serial_for_url(port, **kwargs)


class LinkEndpoint:
    """One end of the line: encodes and writes messages, reads and decodes them.

    Takes over port.timeout (set to poll_interval) so that reads return
    regularly: that is when stop events are checked and half frames expire.
    """

    def __init__(
        self,
        port: SerialLike,
        *,
        secret: bytes | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        version: int = PROTOCOL_VERSION,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self.port = port
        self.secret = secret
        self.max_payload = max_payload
        self.version = version
        self.decoder = FrameDecoder(
            secret=secret, max_payload=max_payload, frame_timeout=frame_timeout, version=version
        )
        if port.timeout != poll_interval:
            port.timeout = poll_interval
        self._received: deque[Received] = deque()

    def encode(self, msg_type: int, request_id: int, payload: dict[str, Any]) -> bytes:
        """The frame bytes for a message (validated; MessageError/FrameError if not valid)."""
        raw = encode_payload(msg_type, payload, max_size=self.max_payload)
        return encode_frame(
            int(msg_type),
            request_id,
            raw,
            secret=self.secret,
            version=self.version,
            max_payload=self.max_payload,
        )

    def send(self, msg_type: int, request_id: int, payload: dict[str, Any]) -> bytes:
        """Encode and write one message; returns the frame bytes written."""
        frame = self.encode(msg_type, request_id, payload)
        self.write_frame(frame)
        return frame

    def write_frame(self, frame: bytes) -> None:
        self.port.write(frame)

    def receive(self, timeout: float | None = None) -> Received | None:
        """The next valid Message or DecodeEvent, or None after `timeout` seconds.

        timeout=None waits indefinitely. Events (noise, CRC errors, auth
        failures, version mismatches, BadMessage...) are returned, not raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._received:
            self._pump()
            if self._received:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return None
        return self._received.popleft()

    def close(self) -> None:
        self.port.close()

    def _pump(self) -> None:
        data = self.port.read(1)
        if data:
            waiting = getattr(self.port, "in_waiting", 0)
            if waiting:
                data += self.port.read(min(waiting, READ_CHUNK))
        for item in self.decoder.feed(data):  # feed(b"") lets half frames expire
            self._received.append(self._interpret(item))

    def _interpret(self, item: Frame | DecodeEvent) -> Received:
        if not isinstance(item, Frame):
            return item
        try:
            msg_type = msg_type_of(item.frame_type)
            payload = decode_payload(msg_type, item.payload, max_size=self.max_payload)
        except MessageError as e:
            return BadMessage(item.frame_type, item.request_id, str(e), item.payload)
        return Message(msg_type, item.request_id, payload, item.payload)


_RESEND = "resend"
_NEW_ID = "new_id"


class LinkClient:
    """The node's side: one request at a time, with timeouts and retries.

    request() returns the reply Message (check .type: a SIGN_REQUEST can be
    answered by SIGN_REPLY, REFUSAL or PENDING). An ERROR reply raises
    LinkRemoteError. A retry resends the same frame (same request id), so the
    appliance answers it from its cache instead of acting twice.
    """

    def __init__(
        self,
        endpoint: LinkEndpoint,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        remembered_ids: int = 256,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self._recent_ids: deque[int] = deque(maxlen=remembered_ids)
        self._lock = threading.Lock()

    def new_request_id(self) -> int:
        while True:
            rid = secrets.randbits(32)
            if rid and rid not in self._recent_ids:
                self._recent_ids.append(rid)
                return rid

    def request(
        self,
        msg_type: int,
        payload: dict[str, Any],
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Message:
        """Send a request and wait for its reply; see the class docstring.

        Raises MessageError (before sending) if the payload is invalid, and
        LinkTimeout, LinkVersionMismatch, LinkAuthError, LinkRemoteError or
        LinkProtocolError as the exchange goes.
        """
        kind = msg_type_of(msg_type)
        if kind not in REQUEST_TYPES:
            raise MessageError(f"{kind.name} is not a request type")
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        with self._lock:
            return self._exchange(kind, payload, timeout, retries)

    def _exchange(
        self, kind: MsgType, payload: dict[str, Any], timeout: float, retries: int
    ) -> Message:
        rid = self.new_request_id()
        frame = self.endpoint.encode(kind, rid, payload)
        noticed: LinkError | None = None
        last = "no attempt"
        for attempt in range(retries + 1):
            try:
                self.endpoint.write_frame(frame)
            except serial.SerialTimeoutException as e:
                raise LinkTimeout(f"{kind.name}: writing the request timed out ({e})") from e
            deadline = time.monotonic() + timeout
            outcome: Message | str | None = None
            while outcome is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                item = self.endpoint.receive(remaining)
                if item is None:
                    break
                outcome, noticed = self._judge(item, kind, rid, noticed)
            if isinstance(outcome, Message):
                return outcome
            if outcome == _NEW_ID:
                last = "the appliance had seen the request id before"
                rid = self.new_request_id()
                frame = self.endpoint.encode(kind, rid, payload)
            elif outcome == _RESEND:
                last = "the frame was corrupted on the line"
            else:
                last = "no reply"
            log.debug("%s %#010x: attempt %d failed: %s", kind.name, rid, attempt + 1, last)
        if noticed is not None:
            raise noticed
        raise LinkTimeout(
            f"no usable reply to {kind.name} (request id {rid:#010x}) after "
            f"{retries + 1} attempt(s) of up to {timeout:g}s each; last: {last}"
        )

    def _judge(
        self, item: Received, kind: MsgType, rid: int, noticed: LinkError | None
    ) -> tuple[Message | str | None, LinkError | None]:
        """What one received item means for the pending request.

        Returns (outcome, noticed): outcome is the reply, _RESEND, _NEW_ID or
        None (keep waiting); `noticed` remembers a version or pairing problem
        seen on some other frame, raised if the request finally times out.
        """
        if isinstance(item, Message):
            if item.request_id != rid or item.type in REQUEST_TYPES:
                log.debug("ignoring stale or stray %s %#010x", item.type.name, item.request_id)
                return None, noticed
            if item.type == MsgType.ERROR:
                code, text = item.payload["code"], item.payload["message"]
                if code == ErrorCode.CORRUPT_FRAME:
                    return _RESEND, noticed
                if code in (ErrorCode.REQUEST_ID_REUSED, ErrorCode.REPLAYED_REQUEST):
                    # Our fresh random id collided with one the appliance remembers.
                    return _NEW_ID, noticed
                if code == ErrorCode.VERSION_MISMATCH:
                    raise LinkVersionMismatch(text)
                raise LinkRemoteError(code, text)
            if item.type not in ALLOWED_REPLIES[kind]:
                raise LinkProtocolError(f"{kind.name} was answered with {item.type.name}")
            return item, noticed
        if isinstance(item, VersionMismatch):
            error: LinkError = LinkVersionMismatch(item.message)
        elif isinstance(item, AuthFailure):
            error = LinkAuthError(
                f"{item.message}; is the appliance on this port paired with this node?"
            )
        elif (
            isinstance(item, FrameProblem)
            and item.request_id == rid
            and item.frame_type not in REQUEST_TYPES
        ):
            if isinstance(item, CrcMismatch):
                return _RESEND, noticed  # the reply was damaged: ask again
            if isinstance(item, BadMessage | OversizeFrame | MalformedHeader):
                raise LinkProtocolError(f"bad reply to {kind.name}: {item.message}")
            return None, noticed
        else:
            return None, noticed
        if item.request_id == rid:
            raise error
        return None, error


Handler = Callable[[MsgType, dict[str, Any], int], tuple[int, dict[str, Any]]]


@dataclass
class LinkStats:
    """Counters of what a LinkServer saw and did."""

    requests: int = 0
    handled: int = 0
    replays: int = 0
    handler_errors: int = 0
    bad_messages: int = 0
    ignored: int = 0
    noise_bytes: int = 0
    crc_errors: int = 0
    auth_failures: int = 0
    version_mismatches: int = 0
    oversize: int = 0
    malformed: int = 0
    timeouts: int = 0
    write_timeouts: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class _CachedReply:
    digest: bytes
    frame: bytes


def _digest(frame_type: int, raw: bytes) -> bytes:
    return hashlib.sha256(bytes([frame_type]) + raw).digest()


class LinkServer:
    """The appliance's side: read requests, run the handler, answer.

    handler(msg_type, payload, request_id) -> (reply_type, reply_payload).
    Nothing that arrives can stop the loop: garbage and bad frames become
    counted events (and an ERROR reply where the sender can be addressed), and
    a handler exception becomes an ERROR reply. Only port failures (the device
    unplugged: serial.SerialException) leave serve_forever.
    """

    def __init__(
        self,
        endpoint: LinkEndpoint,
        *,
        reply_cache_size: int = 64,
        seen_ids: int = 4096,
        on_event: Callable[[DecodeEvent], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.stats = LinkStats()
        self.on_event = on_event
        self._reply_cache_size = reply_cache_size
        self._seen_size = seen_ids
        self._replies: OrderedDict[int, _CachedReply] = OrderedDict()
        self._seen: OrderedDict[int, bytes] = OrderedDict()

    def serve_forever(
        self,
        handler: Handler,
        stop_event: threading.Event,
        poll_interval: float = 0.1,
    ) -> None:
        while not stop_event.is_set():
            self.serve_once(handler, poll_interval)

    def serve_once(self, handler: Handler, timeout: float | None) -> bool:
        """Process at most one received item; False if nothing came within timeout."""
        item = self.endpoint.receive(timeout)
        if item is None:
            return False
        if isinstance(item, Message):
            self._on_message(item, handler)
        else:
            self._on_event(item)
        return True

    # -- requests --------------------------------------------------------------

    def _on_message(self, msg: Message, handler: Handler) -> None:
        if msg.type not in REQUEST_TYPES:
            self.stats.ignored += 1
            log.debug("ignoring %s %#010x: not a request", msg.type.name, msg.request_id)
            return
        self.stats.requests += 1
        if msg.request_id == 0:
            self._send_error(0, ErrorCode.BAD_REQUEST, "request id 0 is reserved")
            return
        self._answer(msg.type, msg.request_id, msg.raw, lambda: self._run(handler, msg))

    def _answer(self, frame_type: int, rid: int, raw: bytes, compute: Callable[[], bytes]) -> None:
        """Answer a request once; answer its repeats from the cache."""
        digest = _digest(frame_type, raw)
        cached = self._replies.get(rid)
        if cached is not None and cached.digest == digest:
            self.stats.replays += 1
            log.info("request %#010x repeated: answering from the cache", rid)
            self._write(cached.frame)
            return
        seen = self._seen.get(rid)
        if seen is not None:
            if seen == digest:
                self.stats.replays += 1
                self._send_error(
                    rid,
                    ErrorCode.REPLAYED_REQUEST,
                    f"request id {rid:#010x} was already answered; its reply is no longer cached",
                )
            else:
                self._send_error(
                    rid, ErrorCode.REQUEST_ID_REUSED, f"request id {rid:#010x} was used before"
                )
            return
        frame = compute()
        self._remember(rid, digest, frame)
        self._write(frame)

    def _run(self, handler: Handler, msg: Message) -> bytes:
        """The reply frame for a valid request; never raises."""
        self.stats.handled += 1
        try:
            reply_type, reply_payload = handler(msg.type, msg.payload, msg.request_id)
        except Exception as e:
            self.stats.handler_errors += 1
            log.exception("handler failed on %s %#010x", msg.type.name, msg.request_id)
            return self._error_frame(
                msg.request_id, ErrorCode.HANDLER_ERROR, f"{type(e).__name__}: {e}"[:1000]
            )
        try:
            kind = msg_type_of(reply_type)
            if kind != MsgType.ERROR and kind not in ALLOWED_REPLIES[msg.type]:
                raise MessageError(f"{kind.name} is not a valid answer to {msg.type.name}")
            return self.endpoint.encode(kind, msg.request_id, reply_payload)
        except (MessageError, FrameError, TypeError, ValueError) as e:
            self.stats.handler_errors += 1
            log.error("handler returned an invalid reply to %s: %s", msg.type.name, e)
            return self._error_frame(
                msg.request_id, ErrorCode.INTERNAL_ERROR, f"invalid reply: {e}"[:1000]
            )

    def _remember(self, rid: int, digest: bytes, frame: bytes) -> None:
        self._replies[rid] = _CachedReply(digest, frame)
        while len(self._replies) > self._reply_cache_size:
            self._replies.popitem(last=False)
        self._seen[rid] = digest
        while len(self._seen) > self._seen_size:
            self._seen.popitem(last=False)

    # -- everything else that can arrive ----------------------------------------

    def _on_event(self, event: DecodeEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event callback failed")
        if isinstance(event, NoiseSkipped):
            self.stats.noise_bytes += event.nbytes
            return
        if isinstance(event, FrameTimeout):
            self.stats.timeouts += 1
            log.info("%s", event.message)
            return
        if not isinstance(event, FrameProblem):
            return
        if event.frame_type in REPLY_TYPES:
            self.stats.ignored += 1  # never answer a reply: no ping-pong
            return
        rid = event.request_id
        if isinstance(event, VersionMismatch):
            self.stats.version_mismatches += 1
            log.warning("%s", event.message)
            self._send_error(rid, ErrorCode.VERSION_MISMATCH, event.message)
        elif event.frame_type not in REQUEST_TYPES and not isinstance(event, BadMessage):
            self.stats.ignored += 1
        elif isinstance(event, BadMessage):
            self.stats.bad_messages += 1
            log.warning("%s", event.message)
            frame = self._error_frame(rid, ErrorCode.BAD_MESSAGE, event.error)
            self._answer(event.frame_type, rid, event.raw, lambda: frame)
        elif isinstance(event, CrcMismatch):
            self.stats.crc_errors += 1
            self._send_error(rid, ErrorCode.CORRUPT_FRAME, event.message)
        elif isinstance(event, AuthFailure):
            self.stats.auth_failures += 1
            log.warning("%s", event.message)
            self._send_error(rid, ErrorCode.AUTH_FAILED, event.message)
        elif isinstance(event, OversizeFrame):
            self.stats.oversize += 1
            self._send_error(rid, ErrorCode.TOO_LARGE, event.message)
        elif isinstance(event, MalformedHeader):
            self.stats.malformed += 1
            self._send_error(rid, ErrorCode.BAD_REQUEST, event.message)

    def _error_frame(self, rid: int, code: str, text: str) -> bytes:
        return self.endpoint.encode(MsgType.ERROR, rid, {"code": code, "message": text})

    def _send_error(self, rid: int, code: str, text: str) -> None:
        self._write(self._error_frame(rid, code, text))

    def _write(self, frame: bytes) -> None:
        try:
            self.endpoint.write_frame(frame)
        except serial.SerialTimeoutException as e:
            # The client retries and gets the cached reply; the loop goes on.
            self.stats.write_timeouts += 1
            log.warning("writing a reply timed out: %s", e)
