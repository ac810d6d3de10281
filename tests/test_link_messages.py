"""The link's typed JSON payloads: schemas, strict decoding, size bounds."""

from __future__ import annotations

import base64
import json

import pytest

from bftanchor.link.messages import (
    ALLOWED_REPLIES,
    REPLY_TYPES,
    REQUEST_TYPES,
    MessageError,
    MsgType,
    decode_payload,
    encode_payload,
)

PSBT = base64.b64encode(b"psbt\xff" + bytes(40)).decode()

VALID = {
    MsgType.HELLO: {"protocol_version": 1, "node_id": "v1"},
    MsgType.HELLO_REPLY: {
        "protocol_version": 1,
        "appliance_id": "appliance-0",
        "device_fingerprint": "d34db33f",
        "epochs": [0, 1],
    },
    MsgType.SIGN_REQUEST: {
        "psbt": PSBT,
        "qc": {"vote_info": {}},
        "records": [{"epoch": 0}],
        "ladder": [1, 2],
    },
    MsgType.SIGN_REPLY: {"psbt": PSBT},
    MsgType.REFUSAL: {"reasons": ["fee above max_fee_sat"]},
    MsgType.STATUS_REQUEST: {},
    MsgType.STATUS_REPLY: {"journal_head": None, "pending": []},
    MsgType.INSTALL_RECORD: {"record": {"epoch": 2, "validators": []}},
    MsgType.INSTALL_REPLY: {"epoch": 2},
    MsgType.ERROR: {"code": "handler_error", "message": "boom"},
    MsgType.PENDING: {"request_id": 12345, "message": "waiting for the operator"},
}


def test_every_type_has_a_valid_example_and_round_trips():
    assert set(VALID) == set(MsgType)
    for t, payload in VALID.items():
        raw = encode_payload(t, payload)
        assert decode_payload(t, raw) == payload
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        assert raw == canonical.encode()


def test_request_and_reply_types_partition():
    assert REQUEST_TYPES | REPLY_TYPES == set(MsgType)
    assert not REQUEST_TYPES & REPLY_TYPES
    for replies in ALLOWED_REPLIES.values():
        assert replies <= REPLY_TYPES


@pytest.mark.parametrize(
    ("msg_type", "payload", "field"),
    [
        (MsgType.HELLO, {}, "HELLO.protocol_version: missing"),
        (MsgType.HELLO, {"protocol_version": True}, "HELLO.protocol_version"),
        (
            MsgType.HELLO_REPLY,
            {**VALID[MsgType.HELLO_REPLY], "device_fingerprint": "xyz"},
            "HELLO_REPLY.device_fingerprint",
        ),
        (
            MsgType.HELLO_REPLY,
            {**VALID[MsgType.HELLO_REPLY], "epochs": [0, -1]},
            "HELLO_REPLY.epochs[1]",
        ),
        (
            MsgType.HELLO_REPLY,
            {**VALID[MsgType.HELLO_REPLY], "appliance_id": ""},
            "HELLO_REPLY.appliance_id",
        ),
        (
            MsgType.SIGN_REQUEST,
            {**VALID[MsgType.SIGN_REQUEST], "psbt": "!!"},
            "SIGN_REQUEST.psbt: not valid base64",
        ),
        (
            MsgType.SIGN_REQUEST,
            {**VALID[MsgType.SIGN_REQUEST], "psbt": "aGVsbG8="},
            "SIGN_REQUEST.psbt: not a PSBT",
        ),
        (MsgType.SIGN_REQUEST, {**VALID[MsgType.SIGN_REQUEST], "qc": []}, "SIGN_REQUEST.qc"),
        (
            MsgType.SIGN_REQUEST,
            {**VALID[MsgType.SIGN_REQUEST], "records": [{}, 3]},
            "SIGN_REQUEST.records[1]",
        ),
        (MsgType.SIGN_REPLY, {}, "SIGN_REPLY.psbt: missing"),
        (MsgType.REFUSAL, {"reasons": []}, "REFUSAL.reasons: must not be empty"),
        (MsgType.REFUSAL, {"reasons": ["ok", 1]}, "REFUSAL.reasons[1]"),
        (MsgType.INSTALL_RECORD, {"record": {}}, "INSTALL_RECORD.record.epoch: missing"),
        (MsgType.INSTALL_RECORD, {"record": {"epoch": "1"}}, "INSTALL_RECORD.record.epoch"),
        (MsgType.INSTALL_REPLY, {"epoch": -1}, "INSTALL_REPLY.epoch"),
        (MsgType.ERROR, {"code": "", "message": "x"}, "ERROR.code: must not be empty"),
        (MsgType.PENDING, {"request_id": 2**32, "message": ""}, "PENDING.request_id"),
        (MsgType.STATUS_REPLY, [], "STATUS_REPLY: payload must be a JSON object"),
    ],
)
def test_invalid_fields_are_named(msg_type, payload, field):
    with pytest.raises(MessageError) as err:
        encode_payload(msg_type, payload)
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff{}", "not valid JSON"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b"[1]", "must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_decoding_is_strict(raw, why):
    with pytest.raises(MessageError) as err:
        decode_payload(MsgType.STATUS_REPLY, raw)
    assert why in str(err.value)


def test_size_bound_and_unknown_types():
    with pytest.raises(MessageError, match="exceeds the limit"):
        encode_payload(MsgType.STATUS_REPLY, {"x": "a" * 100}, max_size=50)
    with pytest.raises(MessageError, match="exceeds the limit"):
        decode_payload(MsgType.STATUS_REPLY, b"{}" + b" " * 100, max_size=50)
    with pytest.raises(MessageError, match="unknown message type 0x55"):
        decode_payload(0x55, b"{}")
    with pytest.raises(MessageError, match="not encodable"):
        encode_payload(MsgType.STATUS_REPLY, {"x": object()})
    with pytest.raises(MessageError, match="not encodable"):
        encode_payload(MsgType.STATUS_REPLY, {"x": float("nan")})
