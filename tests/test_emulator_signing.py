"""Signing through HWI: checkpoint-shaped multisig PSBTs, refusals, limits, legacy flow.

PSBTs are built with embit; HWI's signtx (native sign_psbt, chunked replies)
or JadeClient.legacy_sign_tx (sign_tx/tx_input/get_signature) drives the
emulator; signatures are checked with embit against the BIP143 sighash.
"""

from __future__ import annotations

import math
import socket
import threading

import cbor2
import pytest
from embit import bip32, script
from embit.ec import PublicKey
from embit.psbt import PSBT, DerivationPath
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput
from emulator_fixtures import (
    ACCOUNT,
    DEVICE_MNEMONIC,
    MultisigCoin,
    checkpoint_psbt,
    cosigners,
    descriptor,
    hwi_client,
    op_return,
    partial_sig_verifies,
    root_of,
)
from hwilib.commands import displayaddress, signtx
from hwilib.common import Chain
from hwilib.devices.jade import JadeClient
from hwilib.devices.jadepy import JadeAPI, JadeError
from hwilib.errors import ActionCanceledError, BadArgumentError, DeviceFailureError
from hwilib.psbt import PSBT as HwiPSBT

DEVICE_PUB = root_of(DEVICE_MNEMONIC).derive(ACCOUNT + [0, 0]).sec()


pytest_plugins = ["emulator_fixtures"]  # the start_emulator fixture


def sign_with_hwi(emu, psbt: PSBT, chain: Chain = Chain.TEST) -> PSBT:
    with hwi_client(emu, chain=chain) as client:
        result = signtx(client, psbt.to_string())
    return PSBT.from_string(result["psbt"])


def register(emu, signers, k: int) -> None:
    """Register the wallet the way HWI does: displayaddress --desc."""
    with hwi_client(emu) as client:
        displayaddress(client, desc=descriptor(signers, k))


def test_signs_one_key_of_2_of_3_and_signature_verifies(start_emulator):
    emu = start_emulator()
    coin = MultisigCoin(tuple(cosigners(3)), 2, (0, 0))
    signed = sign_with_hwi(emu, checkpoint_psbt(coin))
    assert partial_sig_verifies(signed, 0, DEVICE_PUB)
    assert [pk.sec() for pk in signed.inputs[0].partial_sigs] == [DEVICE_PUB]
    prompt = emu.prompts[-1]
    assert prompt.kind == "sign_psbt" and prompt.accepted
    assert prompt.details["fee"] == 1_000 and prompt.details["signing_inputs"] == [0]
    # Unregistered: nothing is recognised, so both outputs are shown.
    assert [(o["validated"], o["shown"]) for o in prompt.details["outputs"]] == [
        (False, True), (False, True)]


def test_signature_is_deterministic_low_r(start_emulator):
    emu = start_emulator()
    coin = MultisigCoin(tuple(cosigners(3)), 2, (0, 0))
    first = sign_with_hwi(emu, checkpoint_psbt(coin))
    second = sign_with_hwi(emu, checkpoint_psbt(coin))
    assert first.inputs[0].partial_sigs == second.inputs[0].partial_sigs


def test_change_back_to_registered_multisig_is_recognised(start_emulator):
    emu = start_emulator()
    signers = cosigners(3)
    register(emu, signers, 2)
    coin = MultisigCoin(tuple(signers), 2, (0, 0))
    change = MultisigCoin(tuple(signers), 2, (1, 0))  # BIP44 change branch
    other = MultisigCoin(tuple(cosigners(4)[1:]), 2, (1, 0))  # not ours

    signed = sign_with_hwi(emu, checkpoint_psbt(coin, new_coin=change))
    assert partial_sig_verifies(signed, 0, DEVICE_PUB)
    details = emu.prompts[-1].details
    assert details["multisig_record"] == emu.device.registry.all()[0].name
    assert [(o["validated"], o["change"], o["shown"]) for o in details["outputs"]] == [
        (False, False, True),  # OP_RETURN: always shown
        (True, True, False),  # change to the registered wallet: not shown
    ]

    # Firmware rule: back to the wallet on the receive branch (/0/*) is verified
    # as ours but still shown, as is any output to another wallet.
    sign_with_hwi(emu, checkpoint_psbt(coin))
    assert [(o["validated"], o["change"]) for o in emu.prompts[-1].details["outputs"]] == [
        (False, False), (True, False)]
    sign_with_hwi(emu, checkpoint_psbt(coin, new_coin=other))
    assert [o["validated"] for o in emu.prompts[-1].details["outputs"]] == [False, False]


def test_refuse_all_hook_cancels_through_hwi(start_emulator):
    emu = start_emulator(confirm="refuse")
    coin = MultisigCoin(tuple(cosigners(3)), 2, (0, 0))
    with pytest.raises(ActionCanceledError):
        sign_with_hwi(emu, checkpoint_psbt(coin))
    assert [(p.kind, p.accepted) for p in emu.prompts] == [("sign_psbt", False)]


def test_wait_hook_is_released_by_refuse_then_approve(start_emulator):
    emu = start_emulator(confirm="wait")
    coin = MultisigCoin(tuple(cosigners(3)), 2, (0, 0))
    outcome: list[object] = []

    def attempt() -> None:
        try:
            outcome.append(sign_with_hwi(emu, checkpoint_psbt(coin)))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            outcome.append(exc)

    for press in ("refuse", "approve"):
        thread = threading.Thread(target=attempt)
        thread.start()
        prompt = emu.confirm_hook.next_prompt(timeout=10)
        assert prompt.kind == "sign_psbt" and not prompt.decided
        assert outcome == [] or len(outcome) == 1  # HWI is still waiting
        getattr(prompt, press)()
        thread.join(timeout=10)
    assert isinstance(outcome[0], ActionCanceledError)
    assert isinstance(outcome[1], PSBT) and partial_sig_verifies(outcome[1], 0, DEVICE_PUB)


def test_require_registration_refuses_until_registered(start_emulator):
    emu = start_emulator(require_registration=True)
    signers = cosigners(3)
    psbt = checkpoint_psbt(MultisigCoin(tuple(signers), 2, (0, 0)))
    with pytest.raises(BadArgumentError, match="registered multisig"):
        sign_with_hwi(emu, psbt)
    assert emu.prompts == []  # refused before anything is shown
    register(emu, cosigners(4)[1:] + [signers[0]], 2)  # a different wallet does not help
    with pytest.raises(BadArgumentError, match="registered multisig"):
        sign_with_hwi(emu, psbt)
    register(emu, signers, 2)
    assert partial_sig_verifies(sign_with_hwi(emu, psbt), 0, DEVICE_PUB)


def test_psbt_without_input_utxo_is_refused(start_emulator):
    emu = start_emulator()
    coin = MultisigCoin(tuple(cosigners(3)), 2, (0, 0))
    with pytest.raises(BadArgumentError, match="Input utxo missing"):
        sign_with_hwi(emu, checkpoint_psbt(coin, utxo=False))


def test_outputs_exceeding_inputs_are_refused(start_emulator):
    emu = start_emulator()
    coin = MultisigCoin(tuple(cosigners(3)), 2, (0, 0))
    with pytest.raises(BadArgumentError, match="Invalid input/output amounts"):
        sign_with_hwi(emu, checkpoint_psbt(coin, fee=-1))
    assert emu.prompts == []


def test_wrong_network_is_refused(start_emulator):
    from hwilib.errors import DeviceConnectionError

    emu = start_emulator(network="testnet")
    coin = MultisigCoin(tuple(cosigners(3)), 2, (0, 0))
    with pytest.raises(JadeError) as mismatch:  # HWI's constructor runs auth_user
        JadeClient(emu.path, chain=Chain.MAIN, timeout=10)
    assert mismatch.value.code == JadeError.NETWORK_MISMATCH
    with hwi_client(emu, chain=Chain.REGTEST) as client:  # localtest is a TEST network
        client.chain = Chain.MAIN
        with pytest.raises(DeviceConnectionError, match="Network"):
            signtx(client, checkpoint_psbt(coin).to_string())

    unpinned = start_emulator()
    with hwi_client(unpinned, chain=Chain.MAIN):
        pass  # the first auth_user pins the wallet to MAIN, as production firmware does
    assert unpinned.device.network_type == "MAIN"
    with pytest.raises(JadeError) as pinned:
        JadeClient(unpinned.path, chain=Chain.TEST, timeout=10)
    assert pinned.value.code == JadeError.NETWORK_MISMATCH


def test_large_multisig_round_trips_in_chunks(start_emulator):
    """20-key wsh(sortedmulti(14,...)): a 684-byte witness script."""
    signers = cosigners(20)
    psbt = checkpoint_psbt(MultisigCoin(tuple(signers), 14, (0, 0)))
    raw_len = len(psbt.serialize())
    assert raw_len > 3008

    # A real Jade signs with 520-byte script buffers (sign_psbt.c): it fails.
    faithful = start_emulator()
    with pytest.raises(DeviceFailureError, match="Failed to generate tx input hash"):
        sign_with_hwi(faithful, psbt)

    # Not one of the signers: the PSBT comes back unchanged, over several chunks.
    outsider = start_emulator(mnemonic="abandon " * 11 + "about")
    unchanged = sign_with_hwi(outsider, psbt)
    assert unchanged.tx.serialize() == psbt.tx.serialize()
    assert dict(unchanged.inputs[0].bip32_derivations) == dict(psbt.inputs[0].bip32_derivations)
    assert not unchanged.inputs[0].partial_sigs
    chunks = math.ceil(raw_len / 3008)
    assert outsider.method_counts.get("get_extended_data") == chunks - 1

    # Lifting the limit (emulator option) signs, and the reply is reassembled.
    lifted = start_emulator(firmware_script_limit=False)
    signed = sign_with_hwi(lifted, psbt)
    assert partial_sig_verifies(signed, 0, DEVICE_PUB)
    assert lifted.method_counts["get_extended_data"] == math.ceil(
        len(signed.serialize()) / 3008) - 1


def test_get_extended_data_with_wrong_seqnum_is_a_protocol_error(start_emulator):
    emu = start_emulator(firmware_script_limit=False)
    psbt = checkpoint_psbt(MultisigCoin(tuple(cosigners(20)), 14, (0, 0)))
    with socket.create_connection(("127.0.0.1", emu.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        sock.sendall(cbor2.dumps({"id": "42", "method": "sign_psbt",
                                  "params": {"network": "testnet", "psbt": psbt.serialize()}}))
        first = cbor2.load(stream)
        assert (first["id"], first["seqnum"], first["seqlen"]) == ("42", 1, 2)
        assert len(first["result"]) == 3008
        sock.sendall(cbor2.dumps({"id": "43", "method": "get_extended_data", "params": {
            "origid": "42", "orig": "sign_psbt", "seqnum": 3, "seqlen": 2}}))
        error = cbor2.load(stream)
        assert error["id"] == "43" and error["error"]["code"] == JadeError.PROTOCOL_ERROR
        sock.sendall(cbor2.dumps({"id": "44", "method": "get_version_info"}))
        assert cbor2.load(stream)["result"]["JADE_STATE"] == "READY"  # still serving


def test_legacy_sign_tx_flow(start_emulator):
    """HWI's pre-0.1.47 path: sign_tx + tx_input + get_signature (anti-exfil flow)."""
    emu = start_emulator()
    signers = cosigners(3)
    register(emu, signers, 2)
    coin = MultisigCoin(tuple(signers), 2, (0, 0))
    change = MultisigCoin(tuple(signers), 2, (1, 0))
    hwi_psbt = HwiPSBT()
    hwi_psbt.deserialize(checkpoint_psbt(coin, new_coin=change).to_string())
    with hwi_client(emu) as client:
        signed = client.legacy_sign_tx(hwi_psbt)
    result = PSBT.from_string(signed.serialize())
    # anti-exfil flow signatures are not R-ground (the host entropy sets the nonce)
    assert partial_sig_verifies(result, 0, DEVICE_PUB, low_r=False)
    assert emu.method_counts["sign_tx"] == 1 and emu.method_counts["tx_input"] == 1
    assert emu.method_counts["get_signature"] == 1
    details = emu.prompts[-1].details
    assert emu.prompts[-1].kind == "sign_tx" and details["fee"] == 1_000
    # HWI matched the registered record by name and passed output 1 as change.
    assert [(o["validated"], o["change"]) for o in details["outputs"]] == [
        (False, False), (True, True)]


def test_legacy_sign_tx_refusal_and_amount_check(start_emulator):
    coin = MultisigCoin(tuple(cosigners(3)), 2, (0, 0))
    refusing = start_emulator(confirm="refuse")
    psbt = HwiPSBT()
    psbt.deserialize(checkpoint_psbt(coin).to_string())
    with hwi_client(refusing) as client, pytest.raises(JadeError) as refused:
        client.legacy_sign_tx(psbt)
    assert refused.value.code == JadeError.USER_CANCELLED

    emu = start_emulator()
    psbt = HwiPSBT()
    psbt.deserialize(checkpoint_psbt(coin, fee=-5).to_string())
    with hwi_client(emu) as client, pytest.raises(JadeError) as overspend:
        client.legacy_sign_tx(psbt)
    assert overspend.value.code == JadeError.BAD_PARAMETERS
    assert "less than total output" in overspend.value.message


def _wpkh_psbt(sighash: int | None = None, non_witness_utxo: bool = False) -> PSBT:
    """Input 0 ours (m/84h/1h/0h/0/0), input 1 another wallet's (a fee top-up);
    outputs: OP_RETURN, change to m/84h/1h/0h/1/0, and a payment elsewhere."""
    ours, theirs = root_of(DEVICE_MNEMONIC), cosigners(2)[1].root
    receive, change = "m/84h/1h/0h/0/0", "m/84h/1h/0h/1/0"

    def wpkh(root, path):
        return script.p2wpkh(root.derive(path).get_public_key())

    funding = [  # the transactions that created the two coins being spent
        Transaction(version=2, locktime=0, vin=[TransactionInput(bytes(32), 0)],
                    vout=[TransactionOutput(1, op_return(b"pad")),
                          TransactionOutput(amount, wpkh(root, receive))])
        for root, amount in ((ours, 70_000), (theirs, 36_000))]
    tx = Transaction(version=2, locktime=0, vin=[
        TransactionInput(prev.txid(), 1, sequence=0xFFFFFFFD) for prev in funding], vout=[
        TransactionOutput(0, op_return()),
        TransactionOutput(60_000, wpkh(ours, change)),
        TransactionOutput(45_000, wpkh(theirs, receive))])
    psbt = PSBT(tx)
    for inp, root, prev in zip(psbt.inputs, (ours, theirs), funding, strict=True):
        inp.witness_utxo = prev.vout[1]
        if non_witness_utxo:
            inp.non_witness_utxo = prev
        inp.bip32_derivations[root.derive(receive).get_public_key()] = DerivationPath(
            root.my_fingerprint, bip32.parse_path(receive))
        inp.sighash_type = sighash
    psbt.outputs[1].bip32_derivations[ours.derive(change).get_public_key()] = DerivationPath(
        ours.my_fingerprint, bip32.parse_path(change))
    return psbt


def test_singlesig_input_signed_and_foreign_input_left_alone(start_emulator):
    emu = start_emulator()
    signed = sign_with_hwi(emu, _wpkh_psbt())
    our_pub = root_of(DEVICE_MNEMONIC).derive("m/84h/1h/0h/0/0").sec()
    assert partial_sig_verifies(signed, 0, our_pub)
    assert not signed.inputs[1].partial_sigs
    details = emu.prompts[-1].details
    assert details["fee"] == 1_000 and details["signing_inputs"] == [0]
    assert [(o["validated"], o["change"], o["shown"]) for o in details["outputs"]] == [
        (False, False, True), (True, True, False), (False, False, True)]


def test_sighash_other_than_all_is_refused(start_emulator):
    emu = start_emulator()
    with pytest.raises(BadArgumentError, match="Unsupported sighash"):
        sign_with_hwi(emu, _wpkh_psbt(sighash=SIGHASH.NONE))


def test_legacy_flow_checks_previous_transactions(start_emulator):
    emu = start_emulator()
    our_pub = root_of(DEVICE_MNEMONIC).derive("m/84h/1h/0h/0/0").sec()
    hwi_psbt = HwiPSBT()
    hwi_psbt.deserialize(_wpkh_psbt(non_witness_utxo=True).to_string())
    with hwi_client(emu) as client:
        signed = PSBT.from_string(client.legacy_sign_tx(hwi_psbt).serialize())
    assert partial_sig_verifies(signed, 0, our_pub, low_r=False)
    assert not signed.inputs[1].partial_sigs
    details = emu.prompts[-1].details
    assert (details["input_amount"], details["fee"]) == (106_000, 1_000)
    # HWI passed output 1 as single-sig change (path + variant); the emulator checked it.
    assert [o["change"] for o in details["outputs"]] == [False, True, False]

    # Without the previous transactions a two-input spend cannot be checked.
    hwi_psbt = HwiPSBT()
    hwi_psbt.deserialize(_wpkh_psbt().to_string())
    with hwi_client(emu) as client, pytest.raises(JadeError, match="input_tx"):
        client.legacy_sign_tx(hwi_psbt)


def test_legacy_flow_without_anti_exfil_batches_replies(start_emulator):
    """use_ae_signatures=False: n tx_input messages, then n replies (docs/index.rst)."""
    emu = start_emulator()
    coin = MultisigCoin(tuple(cosigners(3)), 2, (0, 0))
    psbt = checkpoint_psbt(coin)
    tx_input = {"is_witness": True, "satoshi": 100_000, "path": ACCOUNT + [0, 0],
                "script": coin.desc.witness_script().data}
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        signatures = jade.sign_tx("testnet", psbt.tx.serialize(), [tx_input], None,
                                  use_ae_signatures=False)
    psbt.inputs[0].partial_sigs[PublicKey.parse(DEVICE_PUB)] = signatures[0]
    assert partial_sig_verifies(psbt, 0, DEVICE_PUB)  # R-ground, like sign_psbt
