import json
import time

import pytest

from anchornode.bftsim import SimulatedBFTChain
from anchornode.peer_protocol import MAX_MESSAGE, Authenticator, PeerError, seal
from anchornode.qcsource import DirectorySource, DirectoryWriter, HttpSource, serve_directory
from appliance.signers.software import SoftwareSigner
from bftanchor.bftsig import sign_compact


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


def test_tampered_body_and_stale_clock(world):
    sim, auth = world
    data = json.loads(seal("ping", "v1", 0, {"a": 1}, sim.validators[1].bft_secret))
    data["body"]["a"] = 2
    with pytest.raises(PeerError, match="forged"):
        auth.open(json.dumps(data).encode())
    old = json.loads(seal("ping", "v2", 0, {}, sim.validators[2].bft_secret))
    with pytest.raises(PeerError, match="off our clock"):
        auth.open(json.dumps(old).encode(), now=time.time() + 3600)


@pytest.mark.parametrize("raw, fragment", [
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"v": 2}).encode(), "version 2"),
    (json.dumps({"v": 1, "type": "x"}).encode(), "lacks or mangles"),
    (b" " * (MAX_MESSAGE + 1), "exceeds"),
])
def test_garbage_is_a_clear_error(world, raw, fragment):
    _, auth = world
    with pytest.raises(PeerError, match=fragment):
        auth.open(raw)


def test_unknown_type_refused(world):
    sim, auth = world
    body = {"v": 1, "type": "steal", "from": "v1", "epoch": 0, "ts": time.time(), "body": {}}
    import hashlib

    from bftanchor.epoch import canonical_json

    body["sig"] = sign_compact(sim.validators[1].bft_secret,
                               hashlib.sha256(canonical_json(body).encode()).digest()).hex()
    with pytest.raises(PeerError, match="unknown message type"):
        auth.open(json.dumps(body).encode())


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
    server = serve_directory(tmp_path)
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
