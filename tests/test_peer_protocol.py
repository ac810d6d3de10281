import hashlib
import json
import struct
import time

import pytest

from anchornode.bftsim import SimulatedBFTChain
from anchornode.peer_protocol import (
    MAX_HEADER,
    Authenticator,
    PeerError,
    ReplayCache,
    seal,
    split_frame,
)
from anchornode.qcsource import DirectorySource, DirectoryWriter, HttpSource
from appliance.signers.software import SoftwareSigner
from bftanchor.bftsig import sign_compact
from bftanchor.epoch import canonical_json
from bftanchor.publish import serve_http


@pytest.fixture
def world():
    sim = SimulatedBFTChain.create(4, 10)
    rec = sim.make_record(0, {v.id: SoftwareSigner.from_seed(bytes([i + 1]) * 32).pow_key(0)
                              for i, v in enumerate(sim.validators)})
    return sim, Authenticator({0: rec})


def test_valid_message_opens_once(world):
    sim, auth = world
    raw = seal("ping", "v1", 0, {"x": 1}, sim.validators[1].bft_secret)
    msg = auth.open(raw)
    assert (msg.sender, msg.type, msg.body) == ("v1", "ping", {"x": 1})
    with pytest.raises(PeerError, match="replayed"):
        auth.open(raw)


def test_forged_sender(world):
    sim, auth = world
    raw = seal("ping", "v1", 0, {}, sim.validators[3].bft_secret)  # v3 claims to be v1
    with pytest.raises(PeerError, match="forged message claiming to be from v1"):
        auth.open(raw)


def test_unknown_sender_and_epoch(world):
    sim, auth = world
    with pytest.raises(PeerError, match="not a validator of epoch 0"):
        auth.open(seal("ping", "mallory", 0, {}, b"\x07" * 32))
    with pytest.raises(PeerError, match="epoch 5, not held"):
        auth.open(seal("ping", "v1", 5, {}, sim.validators[1].bft_secret))


def _resign(frame: bytes, secret: bytes, body: bytes | None = None, **changes) -> bytes:
    """A frame with header fields changed and signed again by secret."""
    head, raw = split_frame(frame)
    header = json.loads(head)
    if body is not None:
        raw = body
    header.update(changes)
    header.pop("sig")
    header["sig"] = sign_compact(secret, hashlib.sha256(canonical_json(header).encode())
                                 .digest()).hex()
    out = canonical_json(header).encode()
    return struct.pack(">I", len(out)) + out + raw


def test_tampered_body_and_stale_clock(world):
    sim, auth = world
    frame = seal("ping", "v1", 0, {"a": 1}, sim.validators[1].bft_secret)
    head, _ = split_frame(frame)
    with pytest.raises(PeerError, match="does not match its signed header"):
        auth.open(frame[: 4 + len(head)] + b'{"a":2}')
    tampered = json.loads(head)
    tampered["len"] = 99
    raw = canonical_json(tampered).encode()
    with pytest.raises(PeerError, match="forged"):
        auth.open(struct.pack(">I", len(raw)) + raw + b"{}")
    old = seal("ping", "v2", 0, {}, sim.validators[2].bft_secret)
    with pytest.raises(PeerError, match="off our clock"):
        auth.open(old, now=time.time() + 3600)


def _frame(head: bytes, body: bytes = b"{}") -> bytes:
    return struct.pack(">I", len(head)) + head + body


@pytest.mark.parametrize("head, fragment", [
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"v": 1}).encode(), "version '1'"),
    (json.dumps({"v": 2, "type": "x"}).encode(), "lacks"),
    (b"[" * 5000 + b"]" * 5000, "nested too deep|exceeds"),
    (b" " * (MAX_HEADER + 1), "exceeds"),
])
def test_garbage_header_is_a_clear_error(world, head, fragment):
    _, auth = world
    with pytest.raises(PeerError, match=fragment):
        auth.open(_frame(head))


@pytest.mark.parametrize("body, fragment", [
    (b'{"x": 1e400}', "too large"),
    (b'{"x": Infinity}', "not a number"),
    (b'{"x": NaN}', "not a number"),
    (b'{"x": -Infinity}', "not a number"),
    (b'{"x":' * 20 + b"1" + b"}" * 20, "nested too deep"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deep|exceeds"),
    (b'{"x": ' + b"9" * 5000 + b"}", "not JSON"),
    (b"[]", "not a JSON object"),
])
def test_hostile_body_from_a_member_is_a_clear_error(world, body, fragment):
    sim, auth = world
    secret = sim.validators[1].bft_secret
    frame = _resign(seal("ping", "v1", 0, {}, secret), secret, body,
                    len=len(body), body_sha256=hashlib.sha256(body).hexdigest())
    with pytest.raises(PeerError, match=fragment):
        auth.open(frame)


def test_header_types_are_strict(world):
    sim, auth = world
    secret = sim.validators[1].bft_secret
    for change in ({"epoch": 1e300}, {"epoch": True}, {"ts_ms": -1}, {"len": "5"},
                   {"len": 10**9}, {"type": "steal"}):
        frame = _resign(seal("ping", "v1", 0, {}, secret), secret, **change)
        with pytest.raises(PeerError):
            auth.open(frame)


def test_replay_cache_survives_a_restart(world, tmp_path):
    sim, auth = world
    frame = seal("ping", "v1", 0, {"n": 1}, sim.validators[1].bft_secret)
    first = Authenticator(auth.records, ReplayCache(tmp_path / "replay.sqlite"))
    first.open(frame)
    first.replay.close()
    again = Authenticator(auth.records, ReplayCache(tmp_path / "replay.sqlite"))
    with pytest.raises(PeerError, match="replayed"):
        again.open(frame)


def test_a_flooding_sender_is_capped_without_evicting_others(world):
    sim, auth = world
    auth.replay.per_sender = 5
    for i in range(5):
        auth.open(seal("ping", "v1", 0, {"i": i}, sim.validators[1].bft_secret))
    with pytest.raises(PeerError, match="more than 5 messages"):
        auth.open(seal("ping", "v1", 0, {"i": 99}, sim.validators[1].bft_secret))
    auth.open(seal("ping", "v2", 0, {}, sim.validators[2].bft_secret))


def test_qc_sources_directory_and_http_agree(tmp_path):
    sim = SimulatedBFTChain.create(4, 10)
    rec = sim.make_record(0, {v.id: SoftwareSigner.from_seed(bytes([i + 1]) * 32).pow_key(0)
                              for i, v in enumerate(sim.validators)})
    w = DirectoryWriter(tmp_path)
    w.publish_record(rec)
    for r in range(12):
        w.publish_qc(sim.qc(0 if r < 10 else 1, r))
    (tmp_path / "qc" / "e00000001-r000000000099.json").write_text("{broken")
    d = DirectorySource(tmp_path)
    server = serve_http(tmp_path)
    try:
        h = HttpSource(f"http://127.0.0.1:{server.server_address[1]}")
        for src in (d, h):
            assert src.latest().round == 11  # the broken newest file is skipped
            assert src.latest(epoch=0).round == 9
            assert src.latest(epoch=0, max_round=5).round == 5
            assert src.latest(epoch=7) is None
            assert [r.epoch for r in src.records()] == [0]
    finally:
        server.shutdown()
