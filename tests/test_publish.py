"""The publisher API a BFT chain's engineers call (issue 13, item 5; docs/bft-chain.md).

What it writes is what a node's QC source reads, from a directory or over HTTP; what it
refuses is what an appliance would refuse anyway. Its helpers reproduce the project's
test vectors (tests/vectors/formats.json, copied from shared/vectors/).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from anchornode.qcsource import DirectorySource, HttpSource
from bftanchor.bftsig import pubkey_from_secret
from bftanchor.epoch import EpochRecord, Validator, threshold_for
from bftanchor.errors import BadSignature, BelowThreshold, EpochRecordError, QCError
from bftanchor.publish import Publisher, certify, make_qc, serve_http, sign_vote
from bftanchor.qc import VoteInfo

VECTORS = json.loads((Path(__file__).parent / "vectors" / "formats.json").read_text())
SECRETS = {vid: bytes.fromhex(h) for vid, h in VECTORS["bft_private_keys"].items()}


def test_helpers_reproduce_the_vectors():
    v = VECTORS
    qc = v["qc"]
    vote = VoteInfo(
        id=bytes.fromhex(qc["vote_info"]["id"]), round=qc["vote_info"]["round"],
        epoch=qc["vote_info"]["epoch"], parent_id=bytes.fromhex(qc["vote_info"]["parent_id"]),
        parent_round=qc["vote_info"]["parent_round"],
        exec_state_id=bytes.fromhex(qc["vote_info"]["exec_state_id"]))
    csid = bytes.fromhex(qc["ledger_commit_info"]["commit_state_id"])
    sigs = {vid: sign_vote(SECRETS[vid], csid, vote) for vid in qc["signatures"]}
    built = make_qc(vote, csid, sigs).to_json()
    assert built["ledger_commit_info"]["vote_info_hash"] == v["expected"]["vote_info_hash"]
    assert built["signatures"] == qc["signatures"]  # RFC 6979: deterministic
    rec3 = v["epoch_3_record_certified_by_epoch_2"]
    body = EpochRecord.from_json({**rec3, "certificate": {}})
    assert body.certificate_digest().hex() == v["epoch_3_expected"]["certificate_digest"]
    certified = certify(body, {vid: SECRETS[vid] for vid in rec3["certificate"]})
    assert certified.to_json()["certificate"] == rec3["certificate"]


def _record(epoch: int, start: int, length: int, secrets: dict[str, bytes]) -> EpochRecord:
    epoch2 = EpochRecord.from_json(VECTORS["epoch_2"])
    vals = []
    for v in epoch2.validators:  # keys of the vectors, moved to this epoch's BIP48 path
        key = v.pow_key.replace("/2h/2h]", f"/{epoch}h/2h]")
        vals.append(Validator(v.id, pubkey_from_secret(secrets[v.id]), key))
    return EpochRecord(epoch, start, start + length - 1, threshold_for(len(vals)), tuple(vals))


def _qc(epoch: int, rnd: int, signers: list[str]):
    vote = VoteInfo(hashlib.sha256(b"%d" % rnd).digest(), rnd, epoch, bytes(32), rnd - 1,
                    hashlib.sha256(b"exec").digest())
    csid = hashlib.sha256(b"state %d" % rnd).digest()
    return make_qc(vote, csid, {s: sign_vote(SECRETS[s], csid, vote) for s in signers})


@pytest.fixture
def chain():
    pytest.importorskip("embit")
    try:
        r0 = _record(0, 0, 10, SECRETS)
        r0.validate()
    except EpochRecordError:
        pytest.skip("the vectors' keys cannot be moved to another epoch's path")
    r1 = certify(_record(1, 10, 10, SECRETS), {s: SECRETS[s] for s in ("v0", "v1", "v2")})
    return r0, r1


def test_publish_then_read_from_directory_and_http(tmp_path, chain):
    r0, r1 = chain
    pub = Publisher(tmp_path / "bft", r0)
    pub.publish_record(r1)
    pub.publish_qc(_qc(0, 3, ["v0", "v1", "v3"]))
    pub.publish_qc(_qc(1, 12, ["v0", "v1", "v2", "v3"]).to_json())
    src = DirectorySource(tmp_path / "bft")
    assert [r.epoch for r in src.records()] == [0, 1]
    assert (src.latest().epoch, src.latest().round) == (1, 12)
    assert src.latest(epoch=0).round == 3
    server = serve_http(tmp_path / "bft")
    try:
        http = HttpSource(f"http://127.0.0.1:{server.server_address[1]}")
        assert [r.to_json() for r in http.records()] == [r0.to_json(), r1.to_json()]
        assert http.latest().to_json() == src.latest().to_json()
        assert http.latest(epoch=0, max_round=3).round == 3
        assert http.latest(epoch=0, max_round=2) is None
    finally:
        server.shutdown()
        server.server_close()
    # A publisher reopened on the same directory knows what is there.
    assert Publisher(tmp_path / "bft").records.keys() == {0, 1}


def test_publisher_refuses_what_nodes_would_refuse(tmp_path, chain):
    r0, r1 = chain
    pub = Publisher(tmp_path / "bft")
    with pytest.raises(QCError, match="record before"):
        pub.publish_qc(_qc(0, 3, ["v0", "v1", "v2"]))
    with pytest.raises(EpochRecordError, match="before epoch 1"):
        pub.publish_record(r1)
    pub.publish_record(r0)
    with pytest.raises(EpochRecordError, match="quorum"):
        pub.publish_record(r1.with_certificate({"v0": r1.certificate["v0"]}))
    forged = dict(r1.certificate, v2=r1.certificate["v0"])
    with pytest.raises(EpochRecordError, match="v2"):
        pub.publish_record(r1.with_certificate(forged))
    with pytest.raises(QCError, match="outside"):
        pub.publish_qc(_qc(0, 10, ["v0", "v1", "v2"]))
    with pytest.raises(BelowThreshold):
        pub.publish_qc(_qc(0, 4, ["v0", "v1"]))
    bad = _qc(0, 5, ["v0", "v1", "v2"]).to_json()
    bad["signatures"]["v1"] = bad["signatures"]["v0"]
    with pytest.raises(BadSignature):
        pub.publish_qc(bad)
    changed = r0.to_json()
    changed["end_round"] = 11
    with pytest.raises(EpochRecordError, match="differently"):
        pub.publish_record(changed)
    assert not any((tmp_path / "bft" / "qc").iterdir())
