"""The appliance's PSBT reader against embit's: the same PSBT, or the same refusal.

read_psbt only parses public keys once per process; a reader that accepted what embit
refuses, or read a field differently, would let the appliance judge a PSBT other than
the one its signer sees. So every answer is compared with embit's on real checkpoint
PSBTs (P2WSH and tapscript, with signatures on them) and on mutations of their bytes.
"""

from __future__ import annotations

import base64
import functools
import subprocess
import sys
from io import BytesIO

import pytest
from embit.psbt import PSBT, PSBTError, read_string, ser_string
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchorharness.fleet import BenchFleet
from bftanchor.epoch import SCRIPT_TR, SCRIPT_WSH
from bftanchor.psbtread import Key, read_psbt, read_psbt_bytes


@functools.cache
def signed_psbt(script: str) -> bytes:
    """A checkpoint PSBT with two validators' signatures on the coin."""
    fleet = BenchFleet(4, tag=f"psbtread-{script}", script=script)
    fleet.fake_genesis()
    p, _ = fleet.next_request()
    psbt = p.psbt
    for vid in ("v0", "v1"):
        psbt = fleet.signers[vid].sign(psbt, fleet.multisig)
    return psbt.serialize()


def _view(psbt: PSBT) -> tuple:
    """Everything read, with keys as bytes (embit compares keys by serializing them)."""
    def keyed(d: dict) -> dict:
        out = {}
        for k, v in d.items():
            k = (k[0].sec(), k[1]) if isinstance(k, tuple) else k.sec()
            out[k] = v.serialize() if hasattr(v, "serialize") else repr(v)
        return out

    scopes = []
    for scope in (*psbt.inputs, *psbt.outputs):
        scopes.append(
            (
                keyed(scope.bip32_derivations),
                keyed(getattr(scope, "partial_sigs", {})),
                keyed(getattr(scope, "taproot_sigs", {})),
                keyed(scope.taproot_bip32_derivations),
                dict(scope.unknown),
            )
        )
    return psbt.serialize(), scopes


# embit's reader in a child with 256 MiB of address space: a BIP 371 derivation that
# claims far more leaf hashes than its bytes hold makes embit read that many times (a
# list of 2**62 empty reads), which ran a CI machine out of memory.
BOUNDED_EMBIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))
from embit.psbt import PSBT
raw = sys.stdin.buffer.read()
try:
    PSBT.parse(raw)
    print("answers")
except MemoryError:
    print("out of memory")
except Exception:
    print("answers")
"""
LEAVES = "Invalid length of taproot leaf hashes"


def _embit_bounded(raw: bytes) -> str:
    try:
        done = subprocess.run([sys.executable, "-c", BOUNDED_EMBIT], input=raw,
                              capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "no answer"
    return done.stdout.decode().strip() or f"killed ({done.returncode})"


def _embit(raw: bytes) -> tuple:
    """embit's answer; where embit would exhaust memory first (ours then refuses with
    the error embit gives a count merely too large), that refusal."""
    if _ours_plain(raw)[2:] == (LEAVES,) and _embit_bounded(raw) != "answers":
        return "error", PSBTError, LEAVES
    try:
        return "ok", _view(PSBT.parse(raw))
    except Exception as exc:
        return "error", type(exc), str(exc)


def _ours_plain(raw: bytes) -> tuple:
    try:
        return "ok", _view(read_psbt_bytes(raw))
    except Exception as exc:
        return "error", type(exc), str(exc)


def _ours(raw: bytes) -> tuple:
    """read_psbt's answer, checked to be read_psbt_bytes' too."""
    try:
        got = "ok", _view(read_psbt(base64.b64encode(raw).decode()))
    except Exception as exc:
        got = "error", type(exc), str(exc)
    try:
        again = "ok", _view(read_psbt_bytes(raw))
    except Exception as exc:
        again = "error", type(exc), str(exc)
    assert again == got
    return got


@pytest.mark.parametrize("script", [SCRIPT_WSH, SCRIPT_TR])
def test_a_checkpoint_psbt_is_read_as_embit_reads_it(script: str) -> None:
    raw = signed_psbt(script)
    ours = read_psbt(base64.b64encode(raw).decode())
    assert _ours(raw) == _embit(raw)
    assert _ours(raw)[0] == "ok"
    scope = ours.inputs[0]
    keys = list(scope.taproot_bip32_derivations if script == SCRIPT_TR
                else scope.bip32_derivations)
    sigs = list(scope.taproot_sigs if script == SCRIPT_TR else scope.partial_sigs)
    # The keys really are the cached kind, and the signatures were read.
    assert len(keys) == 4 and all(isinstance(k, Key) for k in keys)
    assert len(sigs) == 2
    assert read_psbt(base64.b64encode(raw).decode()).inputs[0] is not scope


@pytest.mark.parametrize("script", [SCRIPT_WSH, SCRIPT_TR])
def test_a_duplicated_key_is_refused_like_embit(script: str) -> None:
    """Each key of input 0 and output 1 written twice, with the same value or another:
    both readers refuse, or both keep the same one."""
    raw = signed_psbt(script)
    psbt = PSBT.parse(raw)
    pairs = _pairs(psbt.inputs[0]) + _pairs(psbt.outputs[1])
    assert len(pairs) > 10
    refused = kept = 0
    for k, v in pairs:
        for again in (v, v[:-1] + bytes([v[-1] ^ 1])):
            doubled = raw.replace(_pair(k, v), _pair(k, v) + _pair(k, again), 1)
            assert _ours(doubled) == _embit(doubled)
            refused += _embit(doubled)[0] == "error"
            kept += _embit(doubled)[0] == "ok"
    assert refused >= 10  # derivations and signatures at least
    assert kept or script == SCRIPT_WSH  # a BIP 371 derivation given twice: the first stays


def _pairs(scope) -> list[tuple[bytes, bytes]]:  # type: ignore[no-untyped-def]
    raw = scope.serialize(skip_separator=True)
    s, out = BytesIO(raw), []
    while s.tell() < len(raw):
        out.append((read_string(s), read_string(s)))
    return out


def _pair(k: bytes, v: bytes) -> bytes:
    b = BytesIO()
    ser_string(b, k)
    ser_string(b, v)
    return b.getvalue()


@pytest.mark.parametrize("script", [SCRIPT_WSH, SCRIPT_TR])
def test_every_reshaped_key_or_value_gets_embits_answer(script: str) -> None:
    """Each pair of input 0 and output 1, its key or value one byte shorter or longer
    (lengths kept consistent), or its key's type byte made the neighbouring types'."""
    raw = signed_psbt(script)
    psbt = PSBT.parse(raw)
    answers = []
    for scope in (psbt.inputs[0], psbt.outputs[1]):
        for k, v in _pairs(scope):
            for k2, v2 in ((k[:-1], v), (k + b"\x02", v), (k, v[:-1]), (k, v + b"\x00"),
                           (bytes([k[0] ^ 0x10]) + k[1:], v),
                           (bytes([k[0] ^ 0x02]) + k[1:], v)):
                changed = raw.replace(_pair(k, v), _pair(k2, v2), 1)
                answers.append(_embit(changed)[0])
                assert _ours(changed) == _embit(changed), (k.hex(), k2.hex(), v2.hex())
    assert "error" in answers and "ok" in answers


mutation = st.tuples(
    st.sampled_from([SCRIPT_WSH, SCRIPT_TR]),
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from(["flip", "cut", "insert", "drop"]),
    st.binary(min_size=1, max_size=3),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation)
def test_mutated_bytes_get_the_same_answer_from_both_readers(m: tuple) -> None:
    script, where, how, data = m
    raw = bytearray(signed_psbt(script))
    i = 5 + where % (len(raw) - 5)  # past the magic: a bad magic is the dull case
    if how == "flip":
        raw[i] ^= data[0] or 1
    elif how == "cut":
        del raw[i:]
    elif how == "insert":
        raw[i:i] = data
    else:
        del raw[i:i + len(data)]
    assert _ours(bytes(raw)) == _embit(bytes(raw))


def test_a_parsed_origin_is_never_shared_between_psbts() -> None:
    """Keys are shared (immutable); an origin holds a list, so each PSBT gets its own."""
    b64 = base64.b64encode(signed_psbt(SCRIPT_WSH)).decode()
    first, second = read_psbt(b64), read_psbt(b64)
    der = next(iter(first.inputs[0].bip32_derivations.values()))
    der.derivation.append(7)
    other = second.inputs[0].bip32_derivations[next(iter(first.inputs[0].bip32_derivations))]
    assert other is not der and other.derivation == der.derivation[:-1]
    assert read_psbt(b64).serialize() == second.serialize() == signed_psbt(SCRIPT_WSH)


def test_a_leaf_count_beyond_its_bytes_is_refused_before_it_is_read() -> None:
    """A BIP 371 derivation on the coin input claiming 2**62 leaf hashes: embit reads that
    many times and runs out of memory; read_psbt refuses it with embit's own error."""
    raw = signed_psbt(SCRIPT_TR)
    k, v = next((k, v) for k, v in _pairs(PSBT.parse(raw).inputs[0]) if k[0] == 0x16)
    huge = b"\xff" + (1 << 62).to_bytes(8, "little") + v[1:]
    bad = raw.replace(_pair(k, v), _pair(k, huge), 1)
    with pytest.raises(PSBTError, match=LEAVES):
        read_psbt_bytes(bad)
    assert _embit_bounded(bad) == "out of memory"
    assert _embit_bounded(raw) == "answers"


def test_the_appliance_refuses_such_a_psbt_in_one_line(tmp_path) -> None:
    """The same PSBT sent to an appliance as a sign request: a refusal naming it."""
    fleet = BenchFleet(4, tag="psbtread-appliance", script=SCRIPT_TR)
    fleet.fake_genesis()
    app = fleet.appliance("v0", tmp_path / "j.sqlite")
    p, (b64, qc, records) = fleet.next_request()
    raw = base64.b64decode(b64)
    k, v = next((k, v) for k, v in _pairs(PSBT.parse(raw).inputs[0]) if k[0] == 0x16)
    huge = b"\xff" + (1 << 62).to_bytes(8, "little") + v[1:]
    bad = base64.b64encode(raw.replace(_pair(k, v), _pair(k, huge), 1)).decode()
    out = app.handle_sign(bad, qc, records)
    assert not out.signed and out.reasons == [f"malformed PSBT: {LEAVES}"]
    assert app.handle_sign(b64, qc, records).signed  # and the real request still is
    app.journal.close()


def test_what_the_reader_keeps_is_bounded() -> None:
    """The caches hold what senders wrote: only keys that parse and origins of a normal
    length are kept, so junk cannot grow them past their bounds."""
    from embit.ec import ECError

    from bftanchor import psbtread

    before = psbtread._origin.cache_info().currsize
    long_origin = b"\x01\x02\x03\x04" + b"\x05\x00\x00\x80" * 40
    for _ in range(3):
        assert psbtread._derivation(long_origin).derivation == [0x80000005] * 40
    assert psbtread._origin.cache_info().currsize == before
    assert psbtread._derivation(long_origin[:12]).derivation == [0x80000005] * 2
    hits = psbtread._origin.cache_info().hits
    psbtread._derivation(long_origin[:12])
    assert psbtread._origin.cache_info().hits == hits + 1  # a normal one is kept
    with pytest.raises(ECError):
        psbtread._key(b"\x02" + b"\xff" * 32)  # not on the curve: not kept
    assert psbtread._key.cache_info().maxsize == psbtread._origin.cache_info().maxsize == 8192
