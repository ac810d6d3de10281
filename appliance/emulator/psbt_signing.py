"""Native PSBT signing, step for step as main/process/sign_psbt.c sign_psbt() does it.

1. Every input must carry its UTXO ("Input utxo missing"); amounts are summed.
2. An input is ours when one of its bip32 derivations has our fingerprint and the
   key derived at that path equals the listed pubkey; >1 keys => multisig input.
3. Only SIGHASH_ALL is signed ("Unsupported sighash").
4. If every signed input is multisig and one registered record builds all of
   them, that record is used to recognise outputs paying back to it.
5. Outputs may not exceed inputs ("Invalid input/output amounts").
6. The user confirms outputs and fee (the prompt); then each of our keys signs.

Output flags follow validate_any_change_outputs(): an output is *validated* when
its script is rebuilt from our key (single-sig) or the matched record (multisig);
it is *change* when validated and its path's penultimate element is 1 (the BIP44
change branch). Change outputs are approved without being shown ("these outputs
will automatically be approved and not be verified by the user", jadepy
JadeAPI.sign_tx docstring); everything else -- OP_RETURN, third-party outputs,
validated receive-branch outputs -- is shown for confirmation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from embit import hashes
from embit.ec import PublicKey
from embit.psbt import PSBT, InputScope
from embit.transaction import SIGHASH

from appliance.emulator.errors import BAD_PARAMETERS, INTERNAL_ERROR, RpcError
from appliance.emulator.multisig import MultisigRecord, MultisigRegistry
from appliance.emulator.networks import bip44_coin, embit_params
from appliance.emulator.params import MAX_PATH_LEN
from appliance.emulator.wallet import SINGLESIG_VARIANTS, Keychain
from bftanchor.psbtread import read_psbt_bytes

PSBT_MAGIC = b"psbt\xff"  # sign_psbt.c PSBT_MAGIC_PREFIX
HARDENED = 0x80000000
# sign_psbt.c signs with script/scriptcode buffers of WALLY_SCRIPTSIG_MAX_LEN (520):
# a longer witness script (a wsh multisig of more than 15 keys) fails there with
# INTERNAL_ERROR "Failed to generate tx input hash".
FIRMWARE_SCRIPT_LIMIT = 520

SIGNING_SINGLESIG = 0x1
SIGNING_MULTISIG = 0x2
SINGLE_MULTISIG_RECORD = 0x10
MULTISIG_CHANGE_ABANDONED = 0x20

WARN_HIGH_FEES = "Fees are high relative to the amount being sent."
WARN_MIXED_INPUTS = "Your inputs in this transaction are of varying types."
WARN_NOTHING_TO_SIGN = "There are no relevant inputs to be signed"


@dataclass
class OutputInfo:
    validated: bool = False
    change: bool = False
    warning: str = ""


@dataclass
class SigningPlan:
    """What sign_psbt() learnt before asking the user: inputs to sign, output flags."""

    psbt: PSBT
    signing_inputs: dict[int, list[tuple[PublicKey, list[int]]]]
    input_amount: int
    output_amount: int
    flags: int
    record: MultisigRecord | None
    outputs: list[OutputInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def unhardened_tail(path: list[int]) -> list[int]:
    """path_get_unhardened_tail_index(): the path after its last hardened element."""
    for i in range(len(path), 0, -1):
        if path[i - 1] & HARDENED:
            return path[i:]
    return list(path)


def parse_psbt(psbt_bytes: bytes) -> PSBT:
    """deserialise_psbt(): magic check first, then a strict parse."""
    if not psbt_bytes.startswith(PSBT_MAGIC):
        raise RpcError(BAD_PARAMETERS, "Failed to extract psbt from passed bytes")
    try:
        return read_psbt_bytes(psbt_bytes)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same error
        raise RpcError(BAD_PARAMETERS, "Failed to extract psbt from passed bytes") from exc


def our_keys(keychain: Keychain, derivations: dict[Any, Any]) -> list[tuple[PublicKey, list[int]]]:
    """key_iter: keys with our fingerprint whose derived pubkey matches the map's."""
    fingerprint = keychain.fingerprint
    found = []
    for pub, origin in derivations.items():
        path = list(origin.derivation)
        if origin.fingerprint != fingerprint or len(path) > MAX_PATH_LEN:
            continue
        if keychain.pubkey(path) == pub.sec():
            found.append((pub, path))
    return found


def _input_utxo(inp: InputScope, index: int) -> Any:
    """wally_psbt_get_input_best_utxo(); a non-witness UTXO must be the tx spent."""
    if inp.witness_utxo is not None:
        return inp.witness_utxo
    if inp.non_witness_utxo is not None:
        if inp.non_witness_utxo.txid() != inp.txid:
            raise RpcError(BAD_PARAMETERS, f"Input {index} non-witness utxo does not match")
        if inp.vout < len(inp.non_witness_utxo.vout):
            return inp.non_witness_utxo.vout[inp.vout]
    raise RpcError(BAD_PARAMETERS, "Input utxo missing")


def _find_record(records: list[MultisigRecord], tail: list[int], keys: set[bytes],
                 spk: bytes) -> MultisigRecord | None:
    """get_suitable_multisig_record(): the first registration that builds this script."""
    for record in records:
        if record.matches(tail, keys, spk):
            return record
    return None


def plan_signing(keychain: Keychain, registry: MultisigRegistry, network: str, psbt: PSBT,
                 require_registration: bool = False) -> SigningPlan:
    """Everything sign_psbt() checks before the confirmation screens."""
    records = registry.for_wallet(keychain.fingerprint)
    signing: dict[int, list[tuple[PublicKey, list[int]]]] = {}
    flags = 0
    record: MultisigRecord | None = None
    input_amount = 0
    kinds: set[str] = set()

    for index, inp in enumerate(psbt.inputs):
        utxo = _input_utxo(inp, index)
        input_amount += utxo.value
        mine = our_keys(keychain, inp.bip32_derivations)
        if not mine:
            continue
        signing[index] = mine
        multisig_input = len(inp.bip32_derivations) > 1
        flags |= SIGNING_MULTISIG if multisig_input else SIGNING_SINGLESIG
        kinds.add("multisig" if multisig_input else "singlesig")
        if inp.sighash_type not in (None, 0, SIGHASH.ALL):
            raise RpcError(BAD_PARAMETERS, "Unsupported sighash")

        keys = {pub.sec() for pub in inp.bip32_derivations}
        spk = utxo.script_pubkey.data
        tail = unhardened_tail(mine[0][1])
        unregistered = require_registration and multisig_input and \
            _find_record(records, tail, keys, spk) is None
        if unregistered:
            # Emulator policy (--require-registration), not firmware behaviour.
            raise RpcError(BAD_PARAMETERS,
                           f"Input {index} does not match any registered multisig wallet")

        if flags & MULTISIG_CHANGE_ABANDONED:
            continue
        if flags & SIGNING_SINGLESIG:
            flags |= MULTISIG_CHANGE_ABANDONED
        elif flags & SINGLE_MULTISIG_RECORD:
            assert record is not None
            if not record.matches(tail, keys, spk):
                flags |= MULTISIG_CHANGE_ABANDONED
        else:
            record = _find_record(records, tail, keys, spk)
            flags |= SINGLE_MULTISIG_RECORD if record else MULTISIG_CHANGE_ABANDONED

    output_amount = sum(out.value for out in psbt.outputs)
    if output_amount > input_amount:
        raise RpcError(BAD_PARAMETERS, "Invalid input/output amounts")

    usable = flags & SINGLE_MULTISIG_RECORD and not flags & MULTISIG_CHANGE_ABANDONED
    plan = SigningPlan(psbt, signing, input_amount, output_amount, flags,
                       record if usable else None)
    plan.outputs = [OutputInfo() for _ in psbt.outputs]
    if flags:
        _validate_change(keychain, network, plan)
    if len(kinds) > 1:
        plan.warnings.append(WARN_MIXED_INPUTS)
    fee = input_amount - output_amount
    spend = output_amount - sum(o.value for o, info in zip(psbt.outputs, plan.outputs, strict=True)
                                if info.change)
    if fee and fee >= spend:
        plan.warnings.append(WARN_HIGH_FEES)
    if not signing:
        plan.warnings.append(WARN_NOTHING_TO_SIGN)
    return plan


_SINGLESIG = {  # embit's script type -> its variant's (builder, BIP44 purpose)
    t: SINGLESIG_VARIANTS[v]
    for t, v in (("p2pkh", "pkh(k)"), ("p2wpkh", "wpkh(k)"), ("p2sh", "sh(wpkh(k))"))
}


def expected_singlesig_path(network: str, purpose: int, is_change: bool, path: list[int]) -> bool:
    """wallet_is_expected_singlesig_path(): m/purpose'/coin'/account'/change/index."""
    return (len(path) == 5
            and path[0] == purpose | HARDENED
            and path[1] == bip44_coin(network) | HARDENED
            and bool(path[2] & HARDENED)
            and path[3] == (1 if is_change else 0)
            and not path[4] & HARDENED)


def path_str(path: list[int]) -> str:
    return "m" + "".join(f"/{p & ~HARDENED}{'h' if p & HARDENED else ''}" for p in path)


def _validate_change(keychain: Keychain, network: str, plan: SigningPlan) -> None:
    """validate_any_change_outputs(): flag outputs we can rebuild from our keys."""
    for out, info in zip(plan.psbt.outputs, plan.outputs, strict=True):
        mine = our_keys(keychain, out.bip32_derivations)
        if not mine:
            continue
        pub, path = mine[0]
        is_change = len(path) >= 2 and path[-2] == 1
        spk = out.script_pubkey
        if len(out.bip32_derivations) == 1:
            if not plan.flags & SIGNING_SINGLESIG:
                continue
            builder = _SINGLESIG.get(spk.script_type() or "")
            if builder is None or builder[0](pub).data != spk.data:
                continue
            info.validated, info.change = True, is_change
            if not expected_singlesig_path(network, builder[1], is_change, path):
                info.warning = f"Unusual receive path: {path_str(path)}"
        elif plan.flags == SIGNING_MULTISIG | SINGLE_MULTISIG_RECORD and plan.record:
            tail = unhardened_tail(path)
            keys = {p.sec() for p in out.bip32_derivations}
            if not plan.record.matches(tail, keys, spk.data):
                continue
            info.validated, info.change = True, is_change
            if len(tail) != 2:
                info.warning = f"Unusual change path suffix: {path_str(path)}"


def prompt_details(plan: SigningPlan, network: str) -> dict[str, Any]:
    """What the outputs and fee screens show (show_btc_transaction_outputs_activity)."""
    outputs = []
    for index, (out, info) in enumerate(zip(plan.psbt.outputs, plan.outputs, strict=True)):
        try:
            address = out.script_pubkey.address(embit_params(network))
        except Exception:  # noqa: BLE001 - OP_RETURN and other non-address scripts
            address = None
        outputs.append({
            "index": index, "value": out.value, "script": out.script_pubkey.data.hex(),
            "address": address, "validated": info.validated, "change": info.change,
            "shown": not info.change or bool(info.warning), "warning": info.warning,
        })
    return {
        "network": network, "outputs": outputs, "input_amount": plan.input_amount,
        "output_amount": plan.output_amount, "fee": plan.input_amount - plan.output_amount,
        "signing_inputs": sorted(plan.signing_inputs),
        "multisig_record": plan.record.name if plan.record else None,
        "warnings": list(plan.warnings),
    }


def _check_signing_scripts(inp: InputScope, script_limit: int | None) -> None:
    """wally_psbt_get_input_signing_script/_scriptcode as sign_psbt.c calls them."""
    fail = RpcError(INTERNAL_ERROR, "Failed to generate tx input hash")
    spk = inp.utxo.script_pubkey
    signing = spk
    if spk.script_type() == "p2sh":
        if inp.redeem_script is None or hashes.hash160(inp.redeem_script.data) != spk.data[2:22]:
            raise fail
        signing = inp.redeem_script
    scriptcode = signing
    if signing.script_type() == "p2wsh":
        witness = inp.witness_script
        if witness is None or hashlib.sha256(witness.data).digest() != signing.data[2:]:
            raise fail
        scriptcode = witness
    if script_limit is not None and max(len(signing.data), len(scriptcode.data)) > script_limit:
        raise fail


def sign_plan(keychain: Keychain, plan: SigningPlan,
              script_limit: int | None = FIRMWARE_SCRIPT_LIMIT) -> bytes:
    """Add a low-R SIGHASH_ALL signature for each of our keys; return the PSBT bytes."""
    psbt = plan.psbt
    for index, keys in plan.signing_inputs.items():
        inp = psbt.inputs[index]
        _check_signing_scripts(inp, script_limit)
        digest = psbt.sighash(index, SIGHASH.ALL)
        for pub, path in keys:
            inp.partial_sigs[pub] = keychain.sign_digest(path, digest) + bytes([SIGHASH.ALL])
    return psbt.serialize()
