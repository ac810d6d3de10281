import copy

import pytest

from bftanchor.bftsig import sign_compact
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import (
    EpochRecord,
    canonical_json,
    threshold_for,
    verify_certificate,
    verify_chain,
)
from bftanchor.errors import DescriptorError, EpochRecordError

CERT_DIGEST = "575aa97d0449bcf14ff5cbd360f7b7a40d54aad91a3d67c6669d411e0c2a874a"


@pytest.fixture
def e2(vectors):
    return EpochRecord.from_json(vectors["epoch_2"])


@pytest.fixture
def e3_json(vectors):
    return copy.deepcopy(vectors["epoch_3_record_certified_by_epoch_2"])


def test_canonical_json_and_certificate_digest(e3_json, vectors):
    e3 = EpochRecord.from_json(e3_json)
    expected = vectors["epoch_3_expected"]["canonical_json_without_certificate"]
    assert canonical_json(e3.body_json()) == expected
    assert e3.certificate_digest().hex() == CERT_DIGEST


def test_certificate_verifies(e2, e3_json):
    assert verify_certificate(EpochRecord.from_json(e3_json), e2) == ["v0", "v1", "v3"]
    assert [r.epoch for r in verify_chain([EpochRecord.from_json(e3_json)], e2)] == [2, 3]


def test_forged_certificate(e2, e3_json):
    e3_json["validators"][0]["pow_key"] = e3_json["validators"][1]["pow_key"].replace(
        "9a8e7094", "028967cf"
    )
    with pytest.raises(EpochRecordError):
        verify_certificate(EpochRecord.from_json(e3_json), e2)


def test_tampered_record_fails_certificate(e2, e3_json):
    e3_json["end_round"] = 500
    with pytest.raises(EpochRecordError, match="certificate signature of v0"):
        verify_certificate(EpochRecord.from_json(e3_json), e2)


def test_short_certificate(e2, e3_json):
    del e3_json["certificate"]["v3"]
    with pytest.raises(EpochRecordError, match="2 signature"):
        verify_certificate(EpochRecord.from_json(e3_json), e2)


def test_certifier_outside_previous_epoch(e2, e3_json, vectors):
    e3 = EpochRecord.from_json(e3_json)
    outsider = bytes.fromhex("11" * 32)
    cert = dict(e3.certificate, eve=sign_compact(outsider, e3.certificate_digest()))
    with pytest.raises(EpochRecordError, match="eve"):
        verify_certificate(e3.with_certificate(cert), e2)


def test_gap_between_epochs(e2, e3_json):
    e3_json["start_round"] = 301
    with pytest.raises(EpochRecordError, match="starts at round 301"):
        verify_certificate(EpochRecord.from_json(e3_json), e2)


def test_threshold_rule():
    assert [threshold_for(n) for n in (1, 3, 4, 7, 10, 20, 100)] == [1, 3, 3, 5, 7, 14, 67]


def test_record_validation(vectors):
    bad = copy.deepcopy(vectors["epoch_2"])
    bad["threshold"] = 2
    with pytest.raises(EpochRecordError, match="threshold 2"):
        EpochRecord.from_json(bad)
    bad = copy.deepcopy(vectors["epoch_2"])
    bad["epoch"] = 5  # keys are on the epoch-2 path
    bad["start_round"], bad["end_round"] = 500, 599
    with pytest.raises(EpochRecordError, match="48h/<coin>h/5h/2h"):
        EpochRecord.from_json(bad)
    bad = copy.deepcopy(vectors["epoch_2"])
    bad["validators"][1]["id"] = "v0"
    with pytest.raises(EpochRecordError, match="duplicate"):
        EpochRecord.from_json(bad)


def test_descriptor_keys_rotate_per_epoch(e2, e3_json):
    m2, m3 = EpochMultisig(e2), EpochMultisig(EpochRecord.from_json(e3_json))
    assert {k.pubkey for k in m2.keys}.isdisjoint({k.pubkey for k in m3.keys})
    assert m2.script_pubkey != m3.script_pubkey


def test_descriptor_matches_embit(e2):
    from embit.descriptor import Descriptor

    m = EpochMultisig(e2)
    d = Descriptor.from_string(m.descriptor()).derive(0)
    assert d.script_pubkey() == m.script_pubkey
    assert m.witness_script.data[0] == 0x50 + 3 and m.witness_script.data[-2] == 0x50 + 4
    secs = [k.pubkey.sec() for k in m.keys]
    assert secs == sorted(secs)


def test_more_than_20_keys_refused(vectors):
    from appliance.signers.software import SoftwareSigner
    from bftanchor.epoch import Validator

    vals = []
    for i in range(21):
        s = SoftwareSigner.from_seed(bytes([i + 1]) * 32)
        vals.append(
            Validator(
                f"v{i}",
                bytes.fromhex(vectors["epoch_2"]["validators"][0]["bft_pubkey"]),
                s.pow_key(0),
            )
        )
    rec = EpochRecord(0, 0, 9, threshold_for(21), tuple(vals))
    with pytest.raises(DescriptorError, match="at most 20"):
        EpochMultisig(rec)
