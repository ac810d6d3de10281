"""Typed message payloads of the link: JSON objects, one per frame.

The frame type byte is the message type. Payloads are UTF-8 JSON objects,
encoded canonically (sorted keys, no spaces), bounded in size, and validated
on both encode and decode, so neither side ever acts on a malformed message.
Fields not listed here are passed through untouched (forward compatibility,
and room for things like a fee ladder next to a SIGN_REQUEST's psbt).

Schemas ("+ extra" = further fields are allowed and passed through):

    HELLO           node -> appliance: {"protocol_version": int >= 1} + extra
    HELLO_REPLY     {"protocol_version": int >= 1, "appliance_id": str,
                     "device_fingerprint": 8 hex chars (BIP32 master fingerprint),
                     "epochs": [int >= 0, ...]} + extra
    SIGN_REQUEST    {"psbt": base64 PSBT, "qc": object, "records": [object, ...]} + extra
    SIGN_REPLY      {"psbt": base64 PSBT carrying the partial signatures} + extra
    REFUSAL         {"reasons": [str, ...] (at least one)} + extra
    STATUS_REQUEST  any object (usually {})
    STATUS_REPLY    any object (journal head, expected coin, pending approvals...)
    INSTALL_RECORD  {"record": epoch record object with "epoch": int >= 0} + extra
    INSTALL_REPLY   {"epoch": int >= 0} + extra
    ERROR           {"code": str (see ErrorCode), "message": str} + extra
    PENDING         {"request_id": u32, "message": str} + extra

PENDING means the request is held for an operator's approval; it ends the
exchange. The node polls by sending the same request again (with a fresh
request id); the appliance recognises it by its content.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from bftanchor.link.frame import DEFAULT_MAX_PAYLOAD, MAX_U32

PSBT_MAGIC = b"psbt\xff"
_FINGERPRINT = re.compile(r"[0-9a-fA-F]{8}")


class MessageError(ValueError):
    """A payload does not match its message type's schema; the text names the field."""


class MsgType(IntEnum):
    """Frame type byte of each message."""

    HELLO = 0x01
    HELLO_REPLY = 0x02
    SIGN_REQUEST = 0x10
    SIGN_REPLY = 0x11
    STATUS_REQUEST = 0x20
    STATUS_REPLY = 0x21
    INSTALL_RECORD = 0x30
    INSTALL_REPLY = 0x31
    REFUSAL = 0x40
    PENDING = 0x41
    ERROR = 0x7F


class ErrorCode:
    """Values of ERROR.code that the link itself produces."""

    BAD_MESSAGE = "bad_message"  # the request's payload failed validation
    BAD_REQUEST = "bad_request"  # not a request type, or request id 0
    CORRUPT_FRAME = "corrupt_frame"  # CRC mismatch: resend (the client does)
    AUTH_FAILED = "auth_failed"  # pairing HMAC check failed
    VERSION_MISMATCH = "version_mismatch"
    TOO_LARGE = "too_large"
    HANDLER_ERROR = "handler_error"  # the appliance's handler raised
    INTERNAL_ERROR = "internal_error"  # the handler returned an invalid reply
    REPLAYED_REQUEST = "replayed_request"  # id seen before, reply no longer cached
    REQUEST_ID_REUSED = "request_id_reused"  # id seen before with another payload


# What a request may be answered with (ERROR is always possible).
ALLOWED_REPLIES: dict[MsgType, frozenset[MsgType]] = {
    MsgType.HELLO: frozenset({MsgType.HELLO_REPLY, MsgType.REFUSAL}),
    MsgType.SIGN_REQUEST: frozenset({MsgType.SIGN_REPLY, MsgType.REFUSAL, MsgType.PENDING}),
    MsgType.STATUS_REQUEST: frozenset({MsgType.STATUS_REPLY}),
    MsgType.INSTALL_RECORD: frozenset({MsgType.INSTALL_REPLY, MsgType.REFUSAL, MsgType.PENDING}),
}
REQUEST_TYPES = frozenset(ALLOWED_REPLIES)
REPLY_TYPES = frozenset(MsgType) - REQUEST_TYPES


def _fail(msg_type: MsgType, field: str, problem: str) -> MessageError:
    return MessageError(f"{msg_type.name}.{field}: {problem}")


def _int(t: MsgType, p: dict, field: str, lo: int, hi: int | None = None) -> None:
    if field not in p:
        raise _fail(t, field, "missing")
    v = p[field]
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise _fail(t, field, f"expected an integer {bound}, got {v!r:.60}")


def _typed(
    t: MsgType, p: dict, field: str, kind: type, what: str, *, nonempty: bool = False
) -> Any:
    """p[field], refused if it is missing, not a `kind` or (with nonempty) empty."""
    if field not in p:
        raise _fail(t, field, "missing")
    v = p[field]
    if not isinstance(v, kind):
        raise _fail(t, field, f"expected {what}, got {type(v).__name__}")
    if nonempty and not v:
        raise _fail(t, field, "must not be empty")
    return v


def _str(t: MsgType, p: dict, field: str, *, nonempty: bool = False) -> None:
    _typed(t, p, field, str, "a string", nonempty=nonempty)


def _obj(t: MsgType, p: dict, field: str) -> None:
    _typed(t, p, field, dict, "an object")


def _list(t: MsgType, p: dict, field: str, item: type, *, nonempty: bool = False) -> None:
    v = _typed(t, p, field, list, "a list", nonempty=nonempty)
    for i, x in enumerate(v):
        if not isinstance(x, item) or (item is int and (isinstance(x, bool) or x < 0)):
            want = "a non-negative integer" if item is int else f"a {item.__name__}"
            raise _fail(t, f"{field}[{i}]", f"expected {want}, got {x!r:.60}")


def _psbt(t: MsgType, p: dict, field: str) -> None:
    _str(t, p, field, nonempty=True)
    try:
        raw = base64.b64decode(p[field], validate=True)
    except (binascii.Error, ValueError) as e:
        raise _fail(t, field, f"not valid base64 ({e})") from None
    if not raw.startswith(PSBT_MAGIC):
        raise _fail(t, field, "not a PSBT (missing the 'psbt\\xff' magic)")


def _hello(t: MsgType, p: dict) -> None:
    _int(t, p, "protocol_version", 1, 0xFF)


def _hello_reply(t: MsgType, p: dict) -> None:
    _int(t, p, "protocol_version", 1, 0xFF)
    _str(t, p, "appliance_id", nonempty=True)
    _str(t, p, "device_fingerprint")
    if not _FINGERPRINT.fullmatch(p["device_fingerprint"]):
        raise _fail(t, "device_fingerprint", "expected 8 hex characters")
    _list(t, p, "epochs", int)


def _sign_request(t: MsgType, p: dict) -> None:
    _psbt(t, p, "psbt")
    _obj(t, p, "qc")
    _list(t, p, "records", dict)


def _sign_reply(t: MsgType, p: dict) -> None:
    _psbt(t, p, "psbt")


def _refusal(t: MsgType, p: dict) -> None:
    _list(t, p, "reasons", str, nonempty=True)


def _any_object(t: MsgType, p: dict) -> None:
    pass


def _install_record(t: MsgType, p: dict) -> None:
    _obj(t, p, "record")
    if "epoch" not in p["record"]:
        raise _fail(t, "record.epoch", "missing")
    epoch = p["record"]["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise _fail(t, "record.epoch", f"expected an integer >= 0, got {epoch!r:.60}")


def _install_reply(t: MsgType, p: dict) -> None:
    _int(t, p, "epoch", 0)


def _error(t: MsgType, p: dict) -> None:
    _str(t, p, "code", nonempty=True)
    _str(t, p, "message")


def _pending(t: MsgType, p: dict) -> None:
    _int(t, p, "request_id", 0, MAX_U32)
    _str(t, p, "message")


_VALIDATORS: dict[MsgType, Callable[[MsgType, dict], None]] = {
    MsgType.HELLO: _hello,
    MsgType.HELLO_REPLY: _hello_reply,
    MsgType.SIGN_REQUEST: _sign_request,
    MsgType.SIGN_REPLY: _sign_reply,
    MsgType.REFUSAL: _refusal,
    MsgType.STATUS_REQUEST: _any_object,
    MsgType.STATUS_REPLY: _any_object,
    MsgType.INSTALL_RECORD: _install_record,
    MsgType.INSTALL_REPLY: _install_reply,
    MsgType.ERROR: _error,
    MsgType.PENDING: _pending,
}


def msg_type_of(value: int) -> MsgType:
    """The MsgType for a frame type byte, or MessageError if there is none."""
    try:
        return MsgType(value)
    except ValueError:
        raise MessageError(f"unknown message type {value:#04x}") from None


def validate(msg_type: int, payload: Any) -> dict[str, Any]:
    """Check `payload` against the schema of `msg_type`; return it unchanged."""
    t = msg_type_of(msg_type)
    if not isinstance(payload, dict):
        raise MessageError(f"{t.name}: payload must be a JSON object, got {type(payload).__name__}")
    _VALIDATORS[t](t, payload)
    return payload


def encode_payload(
    msg_type: int, payload: dict[str, Any], *, max_size: int = DEFAULT_MAX_PAYLOAD
) -> bytes:
    """Validate and encode canonically (sorted keys, no spaces, UTF-8)."""
    t = msg_type_of(msg_type)
    validate(t, payload)
    try:
        raw = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:
        raise MessageError(f"{t.name}: payload is not encodable as JSON ({e})") from None
    if len(raw) > max_size:
        raise MessageError(f"{t.name}: payload of {len(raw)} bytes exceeds the limit of {max_size}")
    return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r:.60}")
        out[key] = value
    return out


def decode_payload(
    msg_type: int, raw: bytes, *, max_size: int = DEFAULT_MAX_PAYLOAD
) -> dict[str, Any]:
    """Parse and validate a payload from the wire; MessageError on anything off.

    Strict JSON: UTF-8 only, no NaN/Infinity, no duplicate keys, an object at
    the top.
    """
    t = msg_type_of(msg_type)
    if len(raw) > max_size:
        raise MessageError(f"{t.name}: payload of {len(raw)} bytes exceeds the limit of {max_size}")
    try:
        text = raw.decode("utf-8")
        payload = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MessageError(f"{t.name}: payload is not valid JSON ({e})") from None
    return validate(t, payload)
