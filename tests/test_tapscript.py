"""Tapscript epochs without a node: records, the leaf against embit's own descriptor
compiler, PSBT fields, signing, finalization and the exact size of the witness."""

from __future__ import annotations

import json

import pytest
from embit.descriptor import Descriptor
from embit.psbt import PSBT
from embit.transaction import SIGHASH

from anchornode.bftsim import SimulatedBFTChain
from appliance.policy import Limits, evaluate
from appliance.signers.base import SignerError
from appliance.signers.software import SoftwareSigner
from bftanchor.descriptor import EpochMultisig, multisig_for
from bftanchor.epoch import SCRIPT_TR, SCRIPT_WSH, EpochRecord
from bftanchor.errors import DescriptorError, EpochRecordError, TemplateError
from bftanchor.payload import Payload
from bftanchor.tapscript import (
    MAX_TAPSCRIPT_KEYS,
    NUMS_XONLY,
    TapscriptMultisig,
    choose_script,
    taproot_input_problems,
)
from bftanchor.template import (
    Coin,
    Outpoint,
    build_checkpoint_psbt,
    estimate_vsize,
    finalize,
    get_signature,
    put_signature,
    signatures,
    verify_partial_sig,
)

COIN = Coin(Outpoint("11" * 32, 0), 10_000_000, 0)


def make(n: int, scripts=(SCRIPT_TR, SCRIPT_TR), seed: int = 0):
    sim = SimulatedBFTChain.create(n, 100, seed)
    signers = {
        v.id: SoftwareSigner.from_seed(bytes([i % 250 + 1, i // 250]) * 16)
        for i, v in enumerate(sim.validators)
    }
    records = {}
    for e, script in enumerate(scripts):
        st = 3 if script == SCRIPT_TR else 2
        records[e] = sim.make_record(e, {k: s.pow_key(e, st) for k, s in signers.items()}, script)
    return sim, signers, records


@pytest.fixture(scope="module")
def five():
    return make(5)


def sign_all(psbt: PSBT, ms: EpochMultisig, signers, count: int) -> PSBT:
    out = PSBT.parse(psbt.serialize())
    for key in ms.keys[:count]:
        signed = signers[key.validator_id].sign(psbt, ms)
        put_signature(out, 0, ms, key.pubkey, get_signature(signed, 0, ms, key.pubkey))
    return out


def test_record_names_its_script_and_keeps_wsh_json(five):
    _, _, records = five
    rec = records[0]
    body = rec.body_json()
    assert body["script"] == SCRIPT_TR
    assert EpochRecord.from_json(json.dumps(rec.to_json())) == rec
    wsh = make(4, (SCRIPT_WSH,))[2][0]
    assert "script" not in wsh.body_json()  # older records keep their canonical JSON
    assert all("/3h]" in v.pow_key for v in rec.validators)


def test_record_refuses_keys_of_the_wrong_script_type(five):
    _, _, records = five
    data = records[0].to_json()
    data["script"] = SCRIPT_WSH  # 3h keys in a wsh record
    with pytest.raises(EpochRecordError, match="48h/<coin>h/0h/2h"):
        EpochRecord.from_json(data)
    data["script"] = "tr-multi"
    with pytest.raises(EpochRecordError, match="expected one of"):
        EpochRecord.from_json(data)


@pytest.mark.parametrize("n", [1, 5, 21, 67])
def test_leaf_and_output_match_embits_descriptor(n):
    _, _, records = make(n, (SCRIPT_TR,))
    ms = EpochMultisig(records[0])
    assert isinstance(ms, TapscriptMultisig) and multisig_for(records[0]).is_taproot
    desc = Descriptor.from_string(ms.descriptor()).derive(0)
    assert desc.script_pubkey() == ms.script_pubkey
    assert desc.taptree.tree.miniscript.compile() == ms.tapscript.data
    assert ms.descriptor().startswith(f"tr({NUMS_XONLY.hex()},sortedmulti_a({ms.threshold},")
    xs = [k.pubkey.xonly() for k in ms.keys]
    assert xs == sorted(xs)


def test_limits_per_script():
    with pytest.raises(DescriptorError, match="at most 20"):
        choose_script(21, tr_max=0)
    assert choose_script(20) == SCRIPT_WSH and choose_script(21) == SCRIPT_TR
    assert choose_script(16, wsh_max=15, tr_max=999) == SCRIPT_TR
    with pytest.raises(DescriptorError, match="cannot sign tapscript"):
        choose_script(16, wsh_max=15, tr_max=0)
    assert choose_script(MAX_TAPSCRIPT_KEYS) == SCRIPT_TR
    with pytest.raises(DescriptorError):
        choose_script(MAX_TAPSCRIPT_KEYS + 1)


def test_psbt_fields_sign_finalize_and_exact_size(five):
    sim, signers, records = five
    ms = EpochMultisig(records[0])
    payload = Payload(0, 5, b"\x07" * 32)
    psbt = build_checkpoint_psbt(COIN, ms, payload, ms, 1000)
    inp = psbt.inputs[0]
    assert inp.taproot_internal_key.xonly() == NUMS_XONLY
    assert inp.taproot_merkle_root == ms.leaf_hash
    assert inp.sighash_type == SIGHASH.ALL and not inp.bip32_derivations
    assert all(leaves == [ms.leaf_hash] for leaves, _ in inp.taproot_bip32_derivations.values())
    assert taproot_input_problems(inp, ms) == []
    signed = sign_all(psbt, ms, signers, ms.threshold + 1)
    assert len(signatures(signed, 0, ms)) == ms.threshold + 1
    tx = finalize(signed, ms)
    items = tx.vin[0].witness.items
    # k signatures (NUMEQUAL wants exactly k), empty slots for the rest, last key first.
    assert len(items) == 5 + 2 and sum(1 for i in items[:5] if i) == ms.threshold
    assert items[-2] == ms.tapscript.data and items[-1] == ms.control_block
    assert all(len(i) == 65 and i[-1] == SIGHASH.ALL for i in items[:5] if i)
    weight = len(tx.serialize()) + 3 * len(_stripped(tx))
    assert estimate_vsize(tx, ms) == -(-weight // 4)  # Schnorr: exact, not a worst case


def _stripped(tx) -> bytes:
    from embit.transaction import Transaction, TransactionInput

    return Transaction(
        tx.version,
        [TransactionInput(i.txid, i.vout, sequence=i.sequence) for i in tx.vin],
        tx.vout,
        tx.locktime,
    ).serialize()


def test_finalize_needs_k_and_catches_bad_signatures(five):
    _, signers, records = five
    ms = EpochMultisig(records[0])
    psbt = build_checkpoint_psbt(COIN, ms, Payload(0, 5, b"\x07" * 32), ms, 1000)
    short = sign_all(psbt, ms, signers, ms.threshold - 1)
    with pytest.raises(TemplateError, match="needed"):
        finalize(short, ms)
    signed = sign_all(psbt, ms, signers, 1)
    key = ms.keys[0].pubkey
    sig = get_signature(signed, 0, ms, key)
    with pytest.raises(TemplateError, match="65-byte"):
        verify_partial_sig(psbt, 0, ms, key, sig[:64])  # SIGHASH_DEFAULT is not signed
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(TemplateError, match="does not verify"):
        verify_partial_sig(psbt, 0, ms, key, bad)
    other = EpochMultisig(records[1])
    with pytest.raises(TemplateError, match="not in the multisig"):
        verify_partial_sig(psbt, 0, ms, other.keys[0].pubkey, sig)


def test_software_signer_signs_only_its_leaf_key(five):
    _, signers, records = five
    ms = EpochMultisig(records[0])
    psbt = build_checkpoint_psbt(COIN, ms, Payload(0, 5, b"\x07" * 32), ms, 1000)
    key = ms.keys[0]
    outsider = SoftwareSigner.from_seed(b"\x99" * 32)
    with pytest.raises(SignerError, match="does not name this signer"):
        outsider.sign(psbt, ms)
    psbt.inputs[0].taproot_bip32_derivations = {}
    with pytest.raises(SignerError, match="does not name this signer"):
        signers[key.validator_id].sign(psbt, ms)


def test_policy_refuses_a_foreign_leaf_or_sighash(five):
    from appliance.journal import JournalState

    sim, _, records = five
    ms = EpochMultisig(records[0])
    qc = sim.qc(0, 5)
    payload = Payload(0, 5, qc.commit_state_id)
    psbt = build_checkpoint_psbt(COIN, ms, payload, ms, 1000)
    psbt.inputs[0].sighash_type = SIGHASH.NONE
    psbt.inputs[0].taproot_merkle_root = b"\x00" * 32
    problems = taproot_input_problems(psbt.inputs[0], ms)
    assert any("merkle root" in p for p in problems)
    state = JournalState(COIN, ())
    v = evaluate(psbt, qc, records, state, Limits(), b"BFTA")
    assert not v.ok and any("sighash type" in r for r in v.reasons)
    assert any("merkle root" in r for r in v.reasons)


def test_console_decodes_a_tapscript_handover(five):
    from tui.decode import decode_request

    sim, _, records = five
    ms = EpochMultisig(records[0])
    qc = sim.qc(0, 95)
    psbt = build_checkpoint_psbt(
        COIN, ms, Payload(0, 95, qc.commit_state_id), EpochMultisig(records[1]), 1000
    )
    item = {
        "id": "1",
        "created": 0.0,
        "verdict": {"ok": True, "reasons": [], "summary": {}},
        "qc": qc.to_json(),
        "records": [r.to_json() for r in records.values()],
        "psbt": psbt.to_string(),
    }
    view = decode_request(item, {0: records[0]}, "litecoin-regtest", b"BFTA")
    assert not view.problems, view.problems
    roles = [o.role for o in view.outputs]
    assert roles[1] == "coin -> epoch 1 multisig, tapscript 4-of-5 (HANDOVER)"
    assert view.handover and view.dest_epoch == 1
    assert view.vsize == estimate_vsize(psbt.tx, ms) and view.fee == 1000
