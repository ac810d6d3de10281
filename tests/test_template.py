import pytest
from embit.psbt import PSBT

from anchornode.bftsim import SimulatedBFTChain
from appliance.signers.base import SignerError
from appliance.signers.software import SoftwareSigner
from bftanchor.descriptor import EpochMultisig
from bftanchor.errors import TemplateError
from bftanchor.payload import Payload
from bftanchor.template import (
    COIN_SEQUENCE,
    TOPUP_SEQUENCE,
    Coin,
    Outpoint,
    build_checkpoint_psbt,
    estimate_vsize,
    finalize,
)


@pytest.fixture
def setup():
    sim = SimulatedBFTChain.create(4, 10)
    signers = {
        v.id: SoftwareSigner.from_seed(bytes([i + 7]) * 32) for i, v in enumerate(sim.validators)
    }
    rec = sim.make_record(0, {vid: s.pow_key(0) for vid, s in signers.items()})
    ms = EpochMultisig(rec)
    coin = Coin(Outpoint("ab" * 32, 1), 1_000_000, 0)
    payload = Payload(0, 5, b"\x01" * 32)
    psbt = build_checkpoint_psbt(coin, ms, payload, ms, 500)
    return signers, ms, psbt


def test_shape(setup):
    _, ms, psbt = setup
    tx = psbt.tx
    assert tx.version == 2 and tx.locktime == 0
    assert [i.sequence for i in tx.vin] == [COIN_SEQUENCE] == [1]
    assert TOPUP_SEQUENCE == 0xFFFFFFFD
    assert tx.vout[0].value == 0 and tx.vout[0].script_pubkey.data[:2] == b"\x6a\x35"
    assert tx.vout[1].value == 1_000_000 - 500 and tx.vout[1].script_pubkey == ms.script_pubkey
    inp = psbt.inputs[0]
    assert inp.witness_script == ms.witness_script
    assert set(inp.bip32_derivations) == {k.pubkey for k in ms.keys}
    for k in ms.keys:
        assert inp.bip32_derivations[k.pubkey].fingerprint == k.fingerprint
    assert set(psbt.outputs[1].bip32_derivations) == {k.pubkey for k in ms.keys}


def test_finalize_needs_k_valid(setup):
    signers, ms, psbt = setup
    signed = [signers[v].sign(psbt, ms) for v in ("v0", "v1")]
    for s in signed:
        psbt.inputs[0].partial_sigs.update(s.inputs[0].partial_sigs)
    with pytest.raises(TemplateError, match="2 valid signature"):
        finalize(psbt, ms)
    psbt.inputs[0].partial_sigs.update(signers["v3"].sign(psbt, ms).inputs[0].partial_sigs)
    tx = finalize(psbt, ms)
    witness = tx.vin[0].witness.items
    assert witness[0] == b"" and len(witness) == 3 + 2 and witness[-1] == ms.witness_script.data
    # The estimate sizes for worst-case signatures: never below the real size, and close.
    stripped = len(PSBT(tx).tx.serialize())
    actual = -(-(stripped * 3 + len(tx.serialize())) // 4)
    assert actual <= estimate_vsize(psbt.tx, ms) <= actual + 3


def test_bad_partial_signature_is_caught(setup):
    signers, ms, psbt = setup
    s = signers["v0"].sign(psbt, ms)
    ((pub, sig),) = s.inputs[0].partial_sigs.items()
    bad = bytearray(sig)
    bad[10] ^= 1
    psbt.inputs[0].partial_sigs[pub] = bytes(bad)
    with pytest.raises(TemplateError):
        finalize(psbt, ms)


def _high_s_twin(der: bytes) -> bytes:
    """The same ECDSA signature with s replaced by n - s, DER-encoded (BIP 66)."""
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    assert der[0] == 0x30 and der[2] == 0x02
    r = der[4:4 + der[3]]
    rest = der[4 + der[3]:]
    assert rest[0] == 0x02
    s_int = int.from_bytes(rest[2:2 + rest[1]], "big")

    def integer(x: int) -> bytes:
        b = x.to_bytes((x.bit_length() + 7) // 8, "big")
        b = b"\x00" + b if b[0] & 0x80 else b
        return b"\x02" + bytes([len(b)]) + b

    body = b"\x02" + bytes([len(r)]) + r + integer(n - s_int)
    return b"\x30" + bytes([len(body)]) + body


def test_each_bad_partial_signature_is_named(setup):
    """verify_partial_sig (libsecp256k1 through coincurve) refuses what embit's checks
    refuse: a flipped bit, the high-s twin, trailing bytes, another sighash type, a key
    outside the multisig; a good signature passes."""
    from embit.ec import PublicKey, Signature

    from bftanchor.template import verify_partial_sig

    signers, ms, psbt = setup
    s = signers["v0"].sign(psbt, ms)
    ((pub, sig),) = s.inputs[0].partial_sigs.items()
    verify_partial_sig(psbt, 0, ms, pub, sig)
    high = _high_s_twin(sig[:-1])
    assert Signature.parse(high)  # a well-formed DER signature, just not low-s
    flipped = bytearray(sig)
    flipped[-5] ^= 1
    outsider = PublicKey.parse(bytes.fromhex(
        "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"))
    for bad, key, message in (
        (bytes(flipped), pub, "does not verify"),
        (high + b"\x01", pub, "does not verify"),
        (sig[:-1] + b"\x00\x01", pub, "does not parse as DER"),
        (sig[:-1] + b"\x03", pub, "not SIGHASH_ALL"),
        (sig, outsider, "not in the multisig"),
        (sig, ms.key_for("v1").pubkey, "does not verify"),
    ):
        with pytest.raises(TemplateError, match=message):
            verify_partial_sig(psbt, 0, ms, key, bad)
    psbt.inputs[0].witness_utxo = None  # no amount to sign for: said as such
    with pytest.raises(TemplateError, match="^input 0 has no witness_utxo$"):
        verify_partial_sig(psbt, 0, ms, pub, sig)


def test_signer_refuses_foreign_derivation(setup):
    signers, ms, psbt = setup
    outsider = SoftwareSigner.from_seed(b"\x99" * 32)
    with pytest.raises(SignerError, match="does not name this signer"):
        outsider.sign(psbt, ms)
    # A derivation for the right key but another epoch's path is refused too.
    me = signers["v0"]
    key = ms.key_for("v0")
    psbt.inputs[0].bip32_derivations[key.pubkey].derivation[2] ^= 1
    with pytest.raises(SignerError):
        me.sign(psbt, ms)


@pytest.mark.parametrize("n", [16, 17, 20])
def test_large_multisig_scripts_sign_and_finalize(n):
    from bftanchor.epoch import threshold_for

    sim = SimulatedBFTChain.create(n, 10)
    signers = {v.id: SoftwareSigner.from_seed(bytes([i + 40]) * 32)
               for i, v in enumerate(sim.validators)}
    rec = sim.make_record(0, {vid: s.pow_key(0) for vid, s in signers.items()})
    ms = EpochMultisig(rec)
    ws = ms.witness_script.data
    k = threshold_for(n)
    head = bytes([0x50 + k]) if k <= 16 else bytes([1, k])
    tail = (bytes([0x50 + n]) if n <= 16 else bytes([1, n])) + b"\xae"
    assert ws.startswith(head) and ws.endswith(tail) and len(ws) == len(head) + 34 * n + len(tail)
    psbt = build_checkpoint_psbt(Coin(Outpoint("ab" * 32, 0), 10**6, 0), ms,
                                 Payload(0, 1, b"\x02" * 32), ms, 800)
    for vid in list(signers)[:k]:
        psbt.inputs[0].partial_sigs.update(signers[vid].sign(psbt, ms).inputs[0].partial_sigs)
    tx = finalize(psbt, ms)
    assert len(tx.vin[0].witness.items) == k + 2


def test_the_software_signers_signature_is_embits_byte_for_byte():
    """sign_der (coincurve's binding) must make exactly embit's low-R ground signature:
    a journaled signature is made again, identical, after a crash. 2,000 random keys and
    digests take the grinding loop some 1,000 times, and through DER lengths 68 to 70."""
    import os

    from embit import ec

    from bftanchor.bftsig import sign_der

    lengths = set()
    for _ in range(2000):
        key, digest = ec.PrivateKey(os.urandom(32)), os.urandom(32)
        der = sign_der(key.secret, digest)
        assert der == key.sign(digest).serialize()
        lengths.add(len(der))
    assert max(lengths) == 70 and min(lengths) < 70
    with pytest.raises(ValueError):
        sign_der(b"\0" * 32, bytes(32))
