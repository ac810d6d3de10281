import pytest

from bftanchor.errors import PayloadError
from bftanchor.payload import Payload

CSID = bytes.fromhex("c47f6e70d47464b4fac4b44aee38243fb9a9aa6ce58966545c6d3c4f1648f07b")
# Pinned here, not read from the shared file, so a change to either is caught.
PAYLOAD_HEX = (
    "4246544101"
    "0000000000000002"
    "0000000000000029"
    "c47f6e70d47464b4fac4b44aee38243fb9a9aa6ce58966545c6d3c4f1648f07b"
)


def test_payload_pinned_bytes():
    p = Payload(epoch=2, round=41, commit_state_id=CSID)
    assert p.encode().hex() == PAYLOAD_HEX
    assert p.script().hex() == "6a35" + PAYLOAD_HEX
    assert len(p.encode()) == 53


def test_payload_matches_shared_vectors(vectors):
    qc = vectors["qc"]
    p = Payload(
        qc["vote_info"]["epoch"],
        qc["vote_info"]["round"],
        bytes.fromhex(qc["ledger_commit_info"]["commit_state_id"]),
    )
    assert p.encode().hex() == vectors["expected"]["payload_hex"]
    assert p.script().hex() == vectors["expected"]["op_return_script_hex"]


def test_roundtrip_and_custom_magic():
    p = Payload(7, 2**64 - 1, bytes(range(32)), magic=b"TEST")
    assert Payload.from_script(p.script(), magic=b"TEST") == p
    assert Payload.decode(p.encode(), magic=None) == p


@pytest.mark.parametrize(
    "script, message",
    [
        (bytes.fromhex("6a35" + PAYLOAD_HEX.replace("42465441", "58585858", 1)), "wrong magic"),
        (
            bytes.fromhex("6a35" + PAYLOAD_HEX[:8] + "02" + PAYLOAD_HEX[10:]),
            "unsupported payload version",
        ),
        (bytes.fromhex("6a34" + PAYLOAD_HEX[:-2]), "push opcode is 0x34"),
        (bytes.fromhex("6a4c35" + PAYLOAD_HEX), "push opcode is 0x4c"),
        (bytes.fromhex("6a35" + PAYLOAD_HEX + "00"), "expected 55"),
        (bytes.fromhex("6a35" + PAYLOAD_HEX[:-2]), "expected 55"),
        (bytes.fromhex("51" + "35" + PAYLOAD_HEX), "does not start with OP_RETURN"),
        (b"\x6a", "has no push"),
        (b"", "does not start with OP_RETURN"),
    ],
)
def test_malformed_scripts_have_specific_errors(script, message):
    with pytest.raises(PayloadError, match=message):
        Payload.from_script(script)


def test_decode_wrong_length():
    with pytest.raises(PayloadError, match="52 bytes, expected 53"):
        Payload.decode(bytes.fromhex(PAYLOAD_HEX)[:-1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epoch": -1}, "epoch must be"),
        ({"round": 2**64}, "round must be"),
        ({"commit_state_id": b"\x01" * 31}, "commit_state_id must be"),
        ({"magic": b"BFT"}, "magic must be"),
        ({"version": 2}, "unsupported payload version"),
    ],
)
def test_constructor_rejects_out_of_range(kwargs, message):
    args = {"epoch": 1, "round": 1, "commit_state_id": CSID, **kwargs}
    with pytest.raises(PayloadError, match=message):
        Payload(**args)
