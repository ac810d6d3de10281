import copy
import hashlib
import json

import pytest

from bftanchor import errors
from bftanchor.bftsig import sign_compact, verify_compact
from bftanchor.epoch import EpochRecord
from bftanchor.qc import QC, verify_qc

# Pinned digests of the design's example QC (computed by hand from the formula).
VOTE_INFO_HASH = "1e2b7d8399d7df70a41182d3cdb92a92e337fec1eb6416ecc42bafdf6889323f"
SIGNED_DIGEST = "058b412cafb09a8e1c7fd1a8d236f912efb907a0f9ffa8e16add36e4e64f749b"
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@pytest.fixture
def record(vectors):
    return EpochRecord.from_json(vectors["epoch_2"])


@pytest.fixture
def qc_json(vectors):
    """The vector's QC moved into its epoch's rounds (241 of 200..299) and re-signed: the
    vector itself (round 41) predates the round rule and pins only the digests."""
    qc_json = copy.deepcopy(vectors["qc"])
    qc_json["vote_info"].update(round=241, parent_round=240)
    qc = QC.from_json(qc_json)
    qc_json["ledger_commit_info"]["vote_info_hash"] = qc.vote_info.hash().hex()
    return resign(qc_json, vectors, ["v0", "v1", "v2"])


def resign(qc_json, vectors, signers):
    qc = QC.from_json(qc_json)
    qc_json["signatures"] = {
        vid: sign_compact(bytes.fromhex(vectors["bft_private_keys"][vid]), qc.signed_digest()).hex()
        for vid in signers
    }
    return qc_json


def test_digests_are_pinned(vectors):
    qc_json = vectors["qc"]
    qc = QC.from_json(qc_json)
    assert qc.vote_info.hash().hex() == VOTE_INFO_HASH
    assert qc.signed_digest().hex() == SIGNED_DIGEST
    manual = hashlib.sha256(
        bytes.fromhex(qc_json["vote_info"]["id"])
        + (41).to_bytes(8, "big")
        + (2).to_bytes(8, "big")
        + bytes.fromhex(qc_json["vote_info"]["parent_id"])
        + (40).to_bytes(8, "big")
        + bytes.fromhex(qc_json["vote_info"]["exec_state_id"])
    ).hexdigest()
    assert manual == VOTE_INFO_HASH


def test_vector_qc_pins_the_digest_but_its_round_is_outside_its_epoch(record, vectors):
    qc = QC.from_json(vectors["qc"])
    assert qc.signed_digest().hex() == vectors["expected"]["signed_digest"]
    with pytest.raises(errors.RoundOutsideEpoch, match="round 41 is outside epoch 2's rounds "
                       "200..299"):
        verify_qc(qc, record)


def test_qc_in_its_epochs_rounds_verifies(qc_json, record):
    assert verify_qc(QC.from_json(qc_json), record) == ["v0", "v1", "v2"]


@pytest.mark.parametrize("round_, ok", [(199, False), (200, True), (299, True), (300, False)])
def test_round_bounds_are_inclusive(qc_json, record, vectors, round_, ok):
    qc_json["vote_info"].update(round=round_)
    qc_json["ledger_commit_info"]["vote_info_hash"] = QC.from_json(qc_json).vote_info.hash().hex()
    qc = QC.from_json(resign(qc_json, vectors, ["v0", "v1", "v2"]))
    if ok:
        assert verify_qc(qc, record)
    else:
        with pytest.raises(errors.RoundOutsideEpoch):
            verify_qc(qc, record)


def test_json_roundtrip(qc_json):
    qc = QC.from_json(json.dumps(qc_json))
    assert qc.to_json() == qc_json


def test_unknown_signer(qc_json, record):
    qc_json["signatures"]["mallory"] = qc_json["signatures"]["v0"]
    with pytest.raises(errors.UnknownSigner, match="mallory"):
        verify_qc(QC.from_json(qc_json), record)


def test_bad_signature(qc_json, record):
    sig = bytearray.fromhex(qc_json["signatures"]["v1"])
    sig[5] ^= 1
    qc_json["signatures"]["v1"] = sig.hex()
    with pytest.raises(errors.BadSignature, match="v1"):
        verify_qc(QC.from_json(qc_json), record)


def test_signature_by_wrong_member(qc_json, record):
    qc_json["signatures"]["v3"] = qc_json["signatures"].pop("v2")
    with pytest.raises(errors.BadSignature, match="v3"):
        verify_qc(QC.from_json(qc_json), record)


def test_high_s(qc_json, record):
    sig = bytes.fromhex(qc_json["signatures"]["v0"])
    s = int.from_bytes(sig[32:], "big")
    qc_json["signatures"]["v0"] = (sig[:32] + (N - s).to_bytes(32, "big")).hex()
    with pytest.raises(errors.HighSSignature):
        verify_qc(QC.from_json(qc_json), record)


def test_duplicate_signer_in_json_text(qc_json, record):
    text = json.dumps(qc_json)
    dup = f'"v0": "{qc_json["signatures"]["v0"]}", '
    text = text.replace('"signatures": {', '"signatures": {' + dup, 1)
    with pytest.raises(errors.DuplicateSigner):
        QC.from_json(text)


def test_duplicate_signer_as_pairs(qc_json, record):
    qc_json["signatures"] = [["v0", qc_json["signatures"]["v0"]]] * 3
    with pytest.raises(errors.DuplicateSigner):
        verify_qc(QC.from_json(qc_json), record)


def test_below_threshold(qc_json, record, vectors):
    resign(qc_json, vectors, ["v0", "v3"])
    with pytest.raises(errors.BelowThreshold, match="2 signature"):
        verify_qc(QC.from_json(qc_json), record)


def test_vote_info_hash_mismatch(qc_json, record):
    qc_json["vote_info"]["round"] = 242
    with pytest.raises(errors.VoteInfoHashMismatch):
        verify_qc(QC.from_json(qc_json), record)


def test_null_commit_state(qc_json, record, vectors):
    qc_json["ledger_commit_info"]["commit_state_id"] = "00" * 32
    resign(qc_json, vectors, ["v0", "v1", "v2"])
    with pytest.raises(errors.NullCommitState):
        verify_qc(QC.from_json(qc_json), record)


def test_wrong_epoch(qc_json, vectors):
    other = EpochRecord.from_json(vectors["epoch_3_record_certified_by_epoch_2"])
    with pytest.raises(errors.EpochMismatch):
        verify_qc(QC.from_json(qc_json), other)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda q: q.pop("vote_info"), "vote_info is missing"),
        (lambda q: q["vote_info"].update(id="abcd"), "vote_info.id is 2 bytes"),
        (lambda q: q["vote_info"].update(round=-1), "vote_info.round"),
        (lambda q: q["vote_info"].update(epoch=True), "vote_info.epoch"),
        (lambda q: q["ledger_commit_info"].update(commit_state_id="zz" * 32), "not valid hex"),
        (lambda q: q["signatures"].update(v0="00" * 63), "63 bytes, expected 64"),
        (lambda q: q.update(signatures="nope"), "signatures is missing"),
    ],
)
def test_format_errors(qc_json, mutate, message):
    mutate(qc_json)
    with pytest.raises(errors.QCFormatError, match=message):
        QC.from_json(qc_json)


def test_not_json():
    with pytest.raises(errors.QCFormatError, match="not valid JSON"):
        QC.from_json("{not json")


def test_compact_roundtrip():
    secret = hashlib.sha256(b"k").digest()
    digest = hashlib.sha256(b"m").digest()
    sig = sign_compact(secret, digest)
    from bftanchor.bftsig import pubkey_from_secret

    verify_compact(pubkey_from_secret(secret), digest, sig)
    assert int.from_bytes(sig[32:], "big") <= N // 2


def _items(count: int, bad: set[int], high_s: set[int] = frozenset()) -> list[tuple]:
    """`count` signatures of one digest by distinct keys; those in `bad` signed by a
    different key, those in `high_s` turned into their malleable twin."""
    from bftanchor.bftsig import pubkey_from_secret

    digest = hashlib.sha256(b"verify_each").digest()
    out = []
    for i in range(count):
        secret = hashlib.sha256(b"key %d" % i).digest()
        signer = hashlib.sha256(b"other %d" % i).digest() if i in bad else secret
        sig = sign_compact(signer, digest)
        if i in high_s:
            s = N - int.from_bytes(sig[32:], "big")
            sig = sig[:32] + s.to_bytes(32, "big")
        out.append((pubkey_from_secret(secret), digest, sig))
    return out


@pytest.mark.parametrize("count", [3, 11, 15])
def test_verify_each_names_each_bad_signature_wherever_it_is(count):
    """From PARALLEL_FROM signatures on, half are checked on a second thread: each
    answer still lands on its own signature, in both halves."""
    from bftanchor.bftsig import PARALLEL_FROM, verify_each

    assert (count >= PARALLEL_FROM) == (count > 3)
    bad, high = {1, count - 1}, {0}
    got = verify_each(_items(count, bad, high))
    assert [i for i, e in enumerate(got) if isinstance(e, errors.HighSSignature)] == sorted(high)
    assert [i for i, e in enumerate(got) if isinstance(e, errors.BadSignature)
            and not isinstance(e, errors.HighSSignature)] == sorted(bad)
    assert verify_each(_items(count, set())) == [None] * count


def test_a_qc_names_its_first_bad_signature_with_many_signers():
    """An 11-signature QC is checked on two threads; the refusal names the first bad
    signature in the QC's order (in the helper thread's half), not a later one."""
    from dataclasses import replace

    from anchorharness.fleet import BenchFleet
    from bftanchor.bftsig import PARALLEL_FROM

    fleet = BenchFleet(15, tag="qc-parallel")
    qc = fleet.qc(5)
    assert len(qc.signatures) == 11 >= PARALLEL_FROM
    verify_qc(qc, fleet.record)
    wrong = sign_compact(hashlib.sha256(b"not a member").digest(), qc.signed_digest())
    sigs = list(qc.signatures)
    for i in (2, 9):
        sigs[i] = (sigs[i][0], wrong)
    with pytest.raises(errors.BadSignature, match=f"signature of {sigs[2][0]}:"):
        verify_qc(replace(qc, signatures=tuple(sigs)), fleet.record)
    sigs[2] = qc.signatures[2]
    with pytest.raises(errors.BadSignature, match=f"signature of {sigs[9][0]}:"):
        verify_qc(replace(qc, signatures=tuple(sigs)), fleet.record)
