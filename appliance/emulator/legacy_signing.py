"""The legacy sign_tx flow: sign_tx, then one tx_input per input, then signatures.

HWI uses it for firmware older than 0.1.47 (hwilib/devices/jade.py
JadeClient.legacy_sign_tx, with use_ae_signatures=True). The message flow is
main/process/sign_tx.c sign_tx_impl() and docs/index.rst "sign_tx request":

    sign_tx -> true
    tx_input x n      (anti-exfil: each answered with a 33-byte signer commitment,
                       or empty bytes for inputs not signed; legacy: no reply yet)
    [user confirms fee]
    get_signature x n (anti-exfil) -> DER signature + sighash byte, or empty bytes
                      (legacy: the n replies are sent to the tx_input ids instead)

Errors found after the inputs are read go to the next get_signature message in
the anti-exfil flow ("we need to load the message to send the error back on").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embit.script import Script
from embit.transaction import SIGHASH, Transaction

from appliance.emulator.errors import (
    BAD_PARAMETERS,
    PROTOCOL_ERROR,
    USER_CANCELLED,
    RpcError,
    bad_params,
)
from appliance.emulator.exchange import Exchange
from appliance.emulator.params import (
    get_bool,
    get_bytes,
    get_path,
    get_str,
    get_uint,
    has_data,
    params_map,
)
from appliance.emulator.psbt_signing import expected_singlesig_path, path_str
from appliance.emulator.wallet import SINGLESIG_VARIANTS
from appliance.emulator.wire import Request

if TYPE_CHECKING:
    from appliance.emulator.device import JadeDevice

@dataclass
class _Input:
    msg_id: str
    path: list[int] | None = None
    digest: bytes | None = None
    commitment_sig: bytes | None = None  # signature matching the returned commitment
    use_ae: bool = False


def _tx_from_params(params: dict[str, Any]) -> Transaction:
    """rpc_get_signing_tx()."""
    raw = get_bytes(params, "txn")
    if not raw:
        raise RpcError(BAD_PARAMETERS, "Failed to extract tx from parameters")
    try:
        tx = Transaction.parse(raw)
    except Exception as exc:  # noqa: BLE001
        raise RpcError(BAD_PARAMETERS, "Failed to extract tx from passed bytes") from exc
    num_inputs = get_uint(params, "num_inputs")
    if not num_inputs:
        raise RpcError(BAD_PARAMETERS, "Failed to extract valid number of inputs from parameters")
    if num_inputs != len(tx.vin):
        raise RpcError(BAD_PARAMETERS, "Unexpected number of inputs for transaction")
    return tx


def _change_info(dev: JadeDevice, network: str, params: dict[str, Any],
                 tx: Transaction) -> list[dict[str, Any]]:
    """rpc_get_signing_outputs(): verify the outputs the host says are ours."""
    info = [{"validated": False, "change": False, "warning": ""} for _ in tx.vout]
    change = params.get("change")
    if change is None:
        return info
    if not isinstance(change, list) or len(change) != len(tx.vout):
        raise RpcError(BAD_PARAMETERS, "Unexpected number of output entries for transaction")
    keychain = dev.require_keychain()
    for index, item in enumerate(change):
        if not isinstance(item, dict):
            continue
        is_change = get_bool(item, "is_change")
        is_change = True if is_change is None else is_change
        warning = ""
        if has_data(item, "multisig_name"):
            record, paths = dev.multisig_paths(item)
            built = record.scripts(record.pubkeys_for(paths)).script_pubkey
        else:
            path = get_path(item, "path")
            if not path:
                raise bad_params("Failed to extract valid receive path from parameters")
            variant = get_str(item, "variant", 24)
            if variant not in SINGLESIG_VARIANTS:
                # No variant means Green multisig in the firmware: not emulated.
                raise RpcError(BAD_PARAMETERS, "Receive script variant not handled")
            builder, purpose = SINGLESIG_VARIANTS[variant]
            if not expected_singlesig_path(network, purpose, is_change, path):
                warning = f"Unusual {'change' if is_change else 'receive'} path: {path_str(path)}"
            built = builder(keychain.public_hdkey(path, network).key).data
        if built != tx.vout[index].script_pubkey.data:
            raise RpcError(BAD_PARAMETERS, "Receive script cannot be validated")
        info[index] = {"validated": True, "change": is_change, "warning": warning}
    return info


def _read_input(dev: JadeDevice, ex: Exchange, tx: Transaction, index: int,
                use_ae: bool) -> tuple[_Input, int | None]:
    """One tx_input message (params_tx_input_signing_data + prevout checks)."""
    req = ex.next_message()
    if req.method != "tx_input":
        raise RpcError(PROTOCOL_ERROR, "Unexpected message, expecting 'tx_input'")
    params = params_map(req.params)
    entry = _Input(req.id)
    is_witness = bool(get_bool(params, "is_witness"))
    script_bytes = b""
    if has_data(params, "path"):
        entry.path = get_path(params, "path")
        script_bytes = get_bytes(params, "script") or b""
        if not entry.path:
            raise RpcError(BAD_PARAMETERS, "Failed to extract valid path from parameters")
        if not script_bytes:
            raise RpcError(BAD_PARAMETERS, "Failed to extract script from parameters")
        sighash = get_uint(params, "sighash")
        if sighash is not None and sighash != SIGHASH.ALL:
            raise RpcError(BAD_PARAMETERS, "Unsupported sighash value")
        if use_ae:
            commitment = get_bytes(params, "ae_host_commitment")
            if commitment is None or len(commitment) != 32:
                raise RpcError(BAD_PARAMETERS,
                               "Failed to extract valid host commitment from parameters")
            entry.use_ae = True

    amount: int | None = None
    input_tx = get_bytes(params, "input_tx")
    if input_tx:
        try:
            prev = Transaction.parse(input_tx)
        except Exception as exc:  # noqa: BLE001
            raise RpcError(BAD_PARAMETERS, "Failed to extract input_tx") from exc
        if prev.txid() != tx.vin[index].txid:
            raise bad_params("input_tx cannot be verified against transaction input data")
        if len(prev.vout) <= tx.vin[index].vout:
            raise RpcError(BAD_PARAMETERS, "input_tx missing corresponding output")
        amount = prev.vout[tx.vin[index].vout].value
    else:
        # "For single segwit v0 inputs we can instead get just the amount" (sign_tx.c)
        if not is_witness or len(tx.vin) > 1:
            raise RpcError(BAD_PARAMETERS, "Failed to extract input_tx from parameters")
        amount = get_uint(params, "satoshi")
        if amount is None:
            raise RpcError(BAD_PARAMETERS, "Failed to extract satoshi from parameters")

    if entry.path is not None:
        dev.check_legacy_registration(entry.path, script_bytes, index)
        code = Script(script_bytes)
        entry.digest = (tx.sighash_segwit(index, code, amount, SIGHASH.ALL) if is_witness
                        else tx.sighash_legacy(index, code, SIGHASH.ALL))
    if use_ae:
        commitment_point = b""
        if entry.path is not None and entry.digest is not None:
            keychain = dev.require_keychain()
            commitment_point, entry.commitment_sig = keychain.nonce_commitment(entry.path,
                                                                               entry.digest)
        ex.reply(commitment_point)
    return entry, amount


def run_sign_tx(dev: JadeDevice, ex: Exchange, network: str, params: dict[str, Any]) -> None:
    tx = _tx_from_params(params)
    use_ae = bool(get_bool(params, "use_ae_signatures"))
    outputs = _change_info(dev, network, params, tx)
    ex.reply(True)

    entries: list[_Input] = []
    input_amount = 0
    for index in range(len(tx.vin)):
        entry, amount = _read_input(dev, ex, tx, index, use_ae)
        entries.append(entry)
        input_amount += amount or 0

    def fail(err: RpcError) -> None:
        if use_ae:
            ex.next_message()  # the error is the reply to the first get_signature
        raise err

    output_amount = sum(out.value for out in tx.vout)
    if output_amount > input_amount:
        fail(RpcError(BAD_PARAMETERS, "Total input amounts less than total output amounts"))
    details = {
        "network": network, "txid": tx.txid().hex(), "input_amount": input_amount,
        "output_amount": output_amount, "fee": input_amount - output_amount,
        "signing_inputs": [i for i, e in enumerate(entries) if e.path is not None],
        "outputs": [{"index": i, "value": out.value, "script": out.script_pubkey.data.hex(),
                     "shown": not info["change"] or bool(info["warning"]), **info}
                    for i, (out, info) in enumerate(zip(tx.vout, outputs, strict=True))],
    }
    if not dev.confirm("sign_tx", details):
        fail(RpcError(USER_CANCELLED, "User declined to sign transaction"))

    keychain = dev.require_keychain()
    if use_ae:
        for entry in entries:
            _answer_get_signature(ex, entry)
        return
    signatures = [keychain.sign_digest(e.path, e.digest) + bytes([SIGHASH.ALL])
                  if e.path is not None and e.digest is not None else b"" for e in entries]
    for entry, signature in zip(entries, signatures, strict=True):
        ex.reply_to(entry.msg_id, signature)


def _answer_get_signature(ex: Exchange, entry: _Input) -> None:
    """send_ae_signature_replies(): one get_signature per input, in order."""
    req: Request = ex.next_message()
    if req.method != "get_signature":
        raise RpcError(PROTOCOL_ERROR, "Unexpected message, expecting 'get_signature'")
    if entry.path is None:
        ex.reply(b"")
        return
    params = params_map(req.params)
    entropy = get_bytes(params, "ae_host_entropy") or b""
    if entropy and len(entropy) != 32:
        raise RpcError(PROTOCOL_ERROR, "Failed to extract valid host entropy from parameters")
    if entry.use_ae != bool(entropy):
        raise RpcError(PROTOCOL_ERROR,
                       "Failed to extract valid host commitment and entropy from parameters")
    assert entry.commitment_sig is not None
    ex.reply(entry.commitment_sig + bytes([SIGHASH.ALL]))
