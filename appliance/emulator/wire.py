"""CBOR message framing on the byte stream, as Jade's main/wire.c does it.

The host writes bare CBOR items back to back (jadepy JadeInterface.write_request:
cbor.dumps(request)) and reads replies with cbor.load() on the stream
(jadepy read_cbor_message), so there is no length prefix: a message ends where
its CBOR item ends. wire.c handle_data_impl() waits for more bytes while the
buffer holds an incomplete item, and rejects a stale or undecodable buffer with
INVALID_REQUEST "Invalid RPC Request message" (data = the rejected length as a
string) addressed to id "00" -- which jadepy's validate_reply() accepts as the
reply to any request.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import cbor2

# main/process.h: MAX_INPUT_MSG_SIZE with SPIRAM (every current Jade has it).
MAX_INPUT_MSG_SIZE = 1024 * 401
# main/utils/cbor_rpc.h MAXLEN_ID; jadepy asserts len(id) < 16 and len(method) < 32.
MAXLEN_ID = 16
MAXLEN_METHOD = 32
# wire.c: "2s 'no activity' stale message timeout".
STALE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Request:
    """One well-formed RPC request: {"id": str, "method": str, "params": any}."""

    id: str
    method: str
    params: Any = None
    has_params: bool = False


@dataclass(frozen=True)
class Rejected:
    """Bytes or an item that is not a valid request; reply goes to `reply_id`."""

    reply_id: str
    message: str
    length: int


@dataclass
class StreamDecoder:
    """Accumulates bytes and yields Requests / Rejected items in stream order."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Request | Rejected]:
        self.buffer.extend(data)
        out: list[Request | Rejected] = []
        while self.buffer:
            stream = io.BytesIO(bytes(self.buffer))
            try:
                item = cbor2.CBORDecoder(stream).decode()
            except cbor2.CBORDecodeEOF:
                if len(self.buffer) >= MAX_INPUT_MSG_SIZE:
                    # wire.c handle_data(): a full buffer is rejected, not awaited.
                    out.append(self._reject_all("Input message too large to handle"))
                break  # incomplete item: await more bytes
            except Exception:  # noqa: BLE001 - any undecodable CBOR is rejected alike
                out.append(self._reject_all("Invalid RPC Request message"))
                break
            used = stream.tell()
            del self.buffer[:used]
            out.append(parse_request(item, used))
        return out

    def flush_stale(self) -> Rejected | None:
        """Reject whatever incomplete bytes sit in the buffer (wire.c stale timeout)."""
        if not self.buffer:
            return None
        return self._reject_all("Invalid RPC Request message")

    def _reject_all(self, message: str) -> Rejected:
        rejected = Rejected("00", message, len(self.buffer))
        self.buffer.clear()
        return rejected


def parse_request(item: Any, length: int) -> Request | Rejected:
    """rpc_request_valid(): a map with text 'id' and text 'method' (cbor_rpc.c)."""
    msg_id = item.get("id") if isinstance(item, dict) else None
    id_ok = isinstance(msg_id, str) and 0 < len(msg_id) <= MAXLEN_ID
    reply_id = msg_id if id_ok else "00"
    method = item.get("method") if isinstance(item, dict) else None
    if not id_ok or not isinstance(method, str) or not 0 < len(method) < MAXLEN_METHOD:
        return Rejected(reply_id, "Invalid RPC Request message", length)
    return Request(msg_id, method, item.get("params"), "params" in item)


def encode_result(msg_id: str, result: Any, seqnum: int | None = None,
                  seqlen: int | None = None) -> bytes:
    """A result reply; 'seqnum'/'seqlen' sit beside 'result' for chunked replies
    (process.c jade_process_reply_to_message_bytes_sequence; jadepy sign_psbt())."""
    reply: dict[str, Any] = {"id": msg_id}
    if seqnum is not None:
        reply["seqnum"] = seqnum
        reply["seqlen"] = seqlen
    reply["result"] = result
    return cbor2.dumps(reply)


def encode_error(msg_id: str, code: int, message: str, data: Any = None) -> bytes:
    """The common error reply (docs/index.rst "common error reply")."""
    return cbor2.dumps({"id": msg_id, "error": {"code": code, "message": message, "data": data}})
