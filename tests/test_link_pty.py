"""The link end to end over a real pseudo-terminal, pyserial on both ends."""

from __future__ import annotations

import base64
import os
import random
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from bftanchor.link.frame import MAGIC, VersionMismatch, encode_frame
from bftanchor.link.messages import ErrorCode, MessageError, MsgType
from bftanchor.link.pty import open_pty_pair
from bftanchor.link.transport import (
    LinkAuthError,
    LinkClient,
    LinkEndpoint,
    LinkRemoteError,
    LinkServer,
    LinkTimeout,
    LinkVersionMismatch,
    Message,
    open_serial,
)

PSBT = base64.b64encode(b"psbt\xff" + bytes(64)).decode()
SECRET = bytes(range(32))


@dataclass
class Appliance:
    """A counting handler standing in for the appliance service."""

    calls: list[tuple[MsgType, dict, int]] = field(default_factory=list)
    slow_once: set[str] = field(default_factory=set)

    def __call__(self, msg_type: MsgType, payload: dict, request_id: int) -> tuple[int, dict]:
        self.calls.append((msg_type, payload, request_id))
        mode = payload.get("mode")
        if mode in self.slow_once:
            self.slow_once.discard(mode)
            time.sleep(0.6)
        if mode == "boom":
            raise RuntimeError("the wallet fell over")
        if mode == "bad_reply":
            return MsgType.SIGN_REPLY, {"psbt": "not base64!"}
        if msg_type == MsgType.HELLO:
            return MsgType.HELLO_REPLY, {
                "protocol_version": 1,
                "appliance_id": "appliance-test",
                "device_fingerprint": "0badf00d",
                "epochs": [0],
            }
        if msg_type == MsgType.SIGN_REQUEST:
            if mode == "refuse":
                return MsgType.REFUSAL, {"reasons": ["fee above max_fee_sat"]}
            if mode == "pending":
                return MsgType.PENDING, {"request_id": request_id, "message": "ask the operator"}
            return MsgType.SIGN_REPLY, {"psbt": payload["psbt"]}
        return MsgType.STATUS_REPLY, {"echo": payload, "count": len(self.calls)}

    def request_ids(self) -> set[int]:
        return {rid for _, _, rid in self.calls}


@dataclass
class Rig:
    client: LinkClient
    server: LinkServer
    appliance: Appliance
    events: list
    node_port: object  # the client's raw port, to write noise into the line


@contextmanager
def link(
    *,
    server_secret: bytes | None = None,
    client_secret: bytes | None = None,
    server_version: int = 1,
    client_version: int = 1,
    server_max_payload: int = 1 << 20,
    client_timeout: float = 2.0,
    client_retries: int = 2,
) -> Iterator[Rig]:
    master, slave_path = open_pty_pair()
    appliance_port = open_serial(slave_path)
    events: list = []
    server = LinkServer(
        LinkEndpoint(
            appliance_port,
            secret=server_secret,
            version=server_version,
            max_payload=server_max_payload,
            frame_timeout=0.3,
        ),
        on_event=events.append,
    )
    client = LinkClient(
        LinkEndpoint(master, secret=client_secret, version=client_version, frame_timeout=0.3),
        timeout=client_timeout,
        retries=client_retries,
    )
    appliance = Appliance()
    stop = threading.Event()
    crashed: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve_forever(appliance, stop, poll_interval=0.05)
        except BaseException as e:  # the test fails below if the loop ever dies
            crashed.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Rig(client, server, appliance, events, master)
        assert thread.is_alive() and not crashed, crashed
    finally:
        stop.set()
        thread.join(5)
        appliance_port.close()
        master.close()


def test_round_trip_of_every_request_kind():
    with link() as rig:
        hello = rig.client.request(MsgType.HELLO, {"protocol_version": 1})
        assert hello.type == MsgType.HELLO_REPLY
        assert hello.payload["device_fingerprint"] == "0badf00d"
        status = rig.client.request(MsgType.STATUS_REQUEST, {"n": 1})
        assert status.type == MsgType.STATUS_REPLY
        assert status.payload["echo"] == {"n": 1}
        sign = {"psbt": PSBT, "qc": {}, "records": []}
        assert rig.client.request(MsgType.SIGN_REQUEST, sign).payload == {"psbt": PSBT}
        refusal = rig.client.request(MsgType.SIGN_REQUEST, {**sign, "mode": "refuse"})
        assert refusal.type == MsgType.REFUSAL
        pending = rig.client.request(MsgType.SIGN_REQUEST, {**sign, "mode": "pending"})
        assert pending.type == MsgType.PENDING
        assert pending.payload["request_id"] == pending.request_id
        assert len(rig.appliance.calls) == 5


def test_large_payload_round_trip():
    with link() as rig:
        big = base64.b64encode(b"psbt\xff" + random.Random(1).randbytes(600_000)).decode()
        reply = rig.client.request(MsgType.SIGN_REQUEST, {"psbt": big, "qc": {}, "records": []})
        assert reply.payload["psbt"] == big


def header(frame_type: int, rid: int, length: int) -> bytes:
    fields = struct.pack(">2sBBBII", MAGIC, 1, frame_type, 0, rid, length)
    return fields + struct.pack(">I", zlib.crc32(fields))


def await_reply(endpoint: LinkEndpoint, rid: int) -> Message:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        item = endpoint.receive(0.2)
        if isinstance(item, Message) and item.request_id == rid:
            return item
    raise AssertionError(f"no reply to {rid:#x}")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noise_and_bad_frames_never_reach_the_handler_and_the_link_recovers(seed):
    rng = random.Random(seed)
    with link(server_max_payload=4096) as rig:
        assert rig.client.request(MsgType.STATUS_REQUEST, {"n": 1}).type == MsgType.STATUS_REPLY
        endpoint = rig.client.endpoint
        manual = endpoint.encode(MsgType.STATUS_REQUEST, 0xABCD0000 + seed, {"manual": 1})
        endpoint.write_frame(manual)
        await_reply(endpoint, 0xABCD0000 + seed)
        assert len(rig.appliance.calls) == 2

        good = endpoint.encode(MsgType.STATUS_REQUEST, 0x11110000, {"cut": "x" * 200})
        corrupt = bytearray(endpoint.encode(MsgType.STATUS_REQUEST, 0x22220000, {"c": 1}))
        corrupt[20] ^= 0xFF
        junk = [
            rng.randbytes(rng.randrange(1, 3000)),
            manual,  # a replay: answered from the cache
            good[: rng.randrange(1, len(good))],  # truncated
            bytes(corrupt),  # CRC error
            header(MsgType.STATUS_REQUEST, 0x33330000, 2**31),  # oversize
            encode_frame(MsgType.STATUS_REQUEST, 0x44440000, b"{not json"),
            encode_frame(0x66, 0x55550000, b"{}"),  # unknown type
            encode_frame(MsgType.STATUS_REPLY, 0x77770000, b"{}"),  # a reply: ignored
            MAGIC * 50 + rng.randbytes(100),
            manual,
            good[: rng.randrange(1, len(good))],
        ]
        rng.shuffle(junk)
        for piece in junk:
            rig.node_port.write(piece)

        reply = rig.client.request(MsgType.STATUS_REQUEST, {"n": 2})
        assert reply.payload["echo"] == {"n": 2}
        assert len(rig.appliance.calls) == 3
        stats = rig.server.stats
        assert stats.replays >= 2 and stats.crc_errors >= 1 and stats.oversize >= 1
        assert stats.bad_messages >= 2 and stats.ignored >= 1 and stats.noise_bytes > 0


def test_a_retry_is_answered_from_the_cache_not_run_twice():
    with link(client_timeout=0.35, client_retries=3) as rig:
        rig.appliance.slow_once.add("slow")
        reply = rig.client.request(MsgType.STATUS_REQUEST, {"mode": "slow"})
        assert reply.payload["echo"] == {"mode": "slow"}
        assert len(rig.appliance.calls) == 1
        deadline = time.monotonic() + 2
        while rig.server.stats.replays < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rig.server.stats.replays >= 1
        # The cached duplicate reply reaches the client later and is ignored as stale.
        assert rig.client.request(MsgType.STATUS_REQUEST, {"n": 9}).payload["echo"] == {"n": 9}


def test_handler_failures_become_error_replies():
    with link() as rig:
        with pytest.raises(LinkRemoteError) as err:
            rig.client.request(MsgType.STATUS_REQUEST, {"mode": "boom"})
        assert err.value.code == ErrorCode.HANDLER_ERROR
        assert "the wallet fell over" in str(err.value)
        sign = {"psbt": PSBT, "qc": {}, "records": [], "mode": "bad_reply"}
        with pytest.raises(LinkRemoteError) as err:
            rig.client.request(MsgType.SIGN_REQUEST, sign)
        assert err.value.code == ErrorCode.INTERNAL_ERROR and "SIGN_REPLY.psbt" in str(err.value)
        assert rig.client.request(MsgType.STATUS_REQUEST, {}).type == MsgType.STATUS_REPLY


def test_paired_link_works_with_the_same_secret():
    with link(server_secret=SECRET, client_secret=SECRET) as rig:
        assert rig.client.request(MsgType.STATUS_REQUEST, {}).type == MsgType.STATUS_REPLY


@pytest.mark.parametrize(
    ("server_secret", "client_secret"),
    [(SECRET, b"w" * 32), (SECRET, None), (None, SECRET)],
)
def test_wrong_pairing_is_refused_without_calling_the_handler(server_secret, client_secret):
    with link(server_secret=server_secret, client_secret=client_secret) as rig:
        started = time.monotonic()
        with pytest.raises(LinkAuthError, match="paired"):
            rig.client.request(MsgType.STATUS_REQUEST, {})
        assert time.monotonic() - started < 1.5  # refused, not timed out
        assert rig.appliance.calls == []
        assert rig.server.stats.auth_failures == 1


def test_version_mismatch_is_clear_on_both_sides():
    with link(client_version=2) as rig:
        with pytest.raises(LinkVersionMismatch) as err:
            rig.client.request(MsgType.HELLO, {"protocol_version": 2})
        assert str(err.value) == "protocol version mismatch: peer speaks v1, we speak v2"
        assert rig.appliance.calls == []
        seen = [e for e in rig.events if isinstance(e, VersionMismatch)]
        assert seen[0].message == "protocol version mismatch: peer speaks v2, we speak v1"


def test_oversize_request_is_refused_by_the_server():
    with link(server_max_payload=1024) as rig:
        with pytest.raises(LinkRemoteError) as err:
            rig.client.request(MsgType.STATUS_REQUEST, {"x": "a" * 5000})
        assert err.value.code == ErrorCode.TOO_LARGE
        assert rig.appliance.calls == []
        assert rig.client.request(MsgType.STATUS_REQUEST, {}).type == MsgType.STATUS_REPLY


def test_client_validates_before_sending_and_times_out_without_a_server():
    master, slave_path = open_pty_pair()
    silent = open_serial(slave_path)
    try:
        client = LinkClient(LinkEndpoint(master), timeout=0.2, retries=1)
        with pytest.raises(MessageError, match="SIGN_REQUEST.psbt"):
            client.request(MsgType.SIGN_REQUEST, {"psbt": "", "qc": {}, "records": []})
        with pytest.raises(MessageError, match="not a request type"):
            client.request(MsgType.SIGN_REPLY, {"psbt": PSBT})
        with pytest.raises(LinkTimeout, match="2 attempt"):
            client.request(MsgType.STATUS_REQUEST, {})
    finally:
        silent.close()
        master.close()


def test_open_serial_loop_url_carries_frames():
    port = open_serial("loop://")
    try:
        endpoint = LinkEndpoint(port)
        endpoint.send(MsgType.STATUS_REQUEST, 42, {"a": 1})
        item = endpoint.receive(1.0)
        assert item == Message(MsgType.STATUS_REQUEST, 42, {"a": 1})
    finally:
        port.close()


def test_an_inherited_master_fd_opens_as_fd_url():
    """How the devnet hands the master end to a child process (pass_fds)."""
    master, slave_path = open_pty_pair()
    inherited = open_serial(f"fd:{os.dup(master.fileno())}")
    slave = open_serial(slave_path)
    try:
        inherited.write(b"to the appliance")
        assert slave.read(16) == b"to the appliance"
        slave.write(b"to the node")
        assert inherited.read(11) == b"to the node"
    finally:
        inherited.close()
        slave.close()
        master.close()
