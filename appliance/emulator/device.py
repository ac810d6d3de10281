"""The emulated Jade: wallet state, method dispatch and the per-method handlers.

Dispatch follows main/process/dashboard.c dispatch_message(): a few methods work
before the wallet is unlocked; every other method needs it (else HW_LOCKED),
follow-up-only methods (tx_input, get_extended_data, get_signature, ...) are a
PROTOCOL_ERROR out of their flow, and anything else is UNKNOWN_METHOD. Each
handler cites the firmware file it follows; parameter errors use the firmware's
messages so HWI and people see the same text a real Jade would produce.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embit import bip32
from embit.script import Script

from appliance.emulator import networks
from appliance.emulator.confirm import ApproveAll, ConfirmationHook, Prompt
from appliance.emulator.errors import (
    BAD_PARAMETERS,
    HW_LOCKED,
    INTERNAL_ERROR,
    NETWORK_MISMATCH,
    PROTOCOL_ERROR,
    UNKNOWN_METHOD,
    USER_CANCELLED,
    RpcError,
    bad_params,
)
from appliance.emulator.exchange import ConnectionClosed, Exchange
from appliance.emulator.legacy_signing import run_sign_tx
from appliance.emulator.multisig import (
    MAX_MULTISIG_SIGNERS,
    MAX_NAME_LEN,
    VARIANT_WRAPPERS,
    MultisigRecord,
    MultisigRegistry,
    Signer,
    name_valid,
)
from appliance.emulator.params import (
    get_bool,
    get_bytes,
    get_path,
    get_str,
    get_uint,
    has_data,
    optional_bool,
    params_map,
    path_from,
)
from appliance.emulator.psbt_signing import (
    FIRMWARE_SCRIPT_LIMIT,
    HARDENED,
    expected_singlesig_path,
    parse_psbt,
    path_str,
    plan_signing,
    prompt_details,
    sign_plan,
    unhardened_tail,
)
from appliance.emulator.state import StoredState, save_state
from appliance.emulator.wallet import SINGLESIG_VARIANTS, Keychain, message_hash
from appliance.emulator.wire import Request

# The firmware's refusal of a liquid network in sign_psbt and sign_tx.
SIGN_ON_LIQUID = "sign_tx call not appropriate for liquid network"

log = logging.getLogger(__name__)

# A release new enough that HWI signs with native sign_psbt
# (hwilib/devices/jade.py PSBT_SUPPORTED_FW_VERSION = 0.1.47).
FIRMWARE_VERSION = "1.0.35"
# sign_psbt.c: PSBT_OUT_CHUNK_SIZE = MAX_OUTPUT_MSG_SIZE (3 KiB) - 64
PSBT_OUT_CHUNK_SIZE = 1024 * 3 - 64
PASSPHRASE_MAX_LEN = 100  # main/keychain.h
MAX_NETWORK_NAME_LEN = 24  # main/utils/network.h (buffer incl. NUL)
MAX_VARIANT_LEN = 24  # main/wallet.h
GDK_CHALLENGE_PATH = 0x4741B11E  # sign_message.c: auto-signed login challenge
GDK_CHALLENGE_PREFIX = "greenaddress.it      login "

MAX_PROMPT_HISTORY = 1000
NO_REPLY = object()  # the handler replied itself (multi-message flows)

PRE_AUTH = {"get_version_info", "add_entropy", "set_epoch", "logout", "update_pinserver",
            "auth_user", "cancel", "debug_set_mnemonic"}
FOLLOW_UP_ONLY = {"ota_data", "ota_complete", "tx_input", "get_extended_data",
                  "get_signature", "handshake_init", "handshake_complete"}

_FILE_FORMATS = {"sh(multi(k))": "P2SH", "wsh(multi(k))": "P2WSH",
                 "sh(wsh(multi(k)))": "P2WSH-P2SH"}


@dataclass
class DeviceOptions:
    """Behaviour switches; the defaults are the firmware's behaviour."""

    require_registration: bool = False  # emulator policy: multisig inputs need a record
    script_limit: int | None = FIRMWARE_SCRIPT_LIMIT  # None lifts the 520-byte limit


class JadeDevice:
    """One Jade: its keys, its flash (state file) and its screen (the confirm hook)."""

    def __init__(self, *, keychain: Keychain | None = None,
                 registry: MultisigRegistry | None = None, network_type: str | None = None,
                 confirm: ConfirmationHook | None = None, options: DeviceOptions | None = None,
                 state_path: Path | None = None) -> None:
        self.keychain = keychain
        # The wallet in 'flash' that auth_user can unlock after a logout.
        self.persisted = keychain.persistable if keychain else None
        self.registry = registry if registry is not None else MultisigRegistry()
        self.network_type = network_type
        self.confirm_hook: ConfirmationHook = confirm or ApproveAll()
        self.options = options or DeviceOptions()
        self.state_path = state_path
        self.lock = threading.RLock()
        self.busy = False
        self.prompts: list[Prompt] = []
        self.method_counts: Counter[str] = Counter()

    # -- plumbing ---------------------------------------------------------------

    def handle(self, ex: Exchange, req: Request) -> None:
        """Process one request (and any follow-ups it reads) under the device lock."""
        log.debug("request id=%s method=%s", req.id, req.method)  # never the params
        with self.lock:
            self.busy = True
            try:
                result = self._dispatch(ex, req)
                if result is not NO_REPLY:
                    ex.reply(result)
            except RpcError as err:
                ex.reply_error(err)
            except ConnectionClosed:
                log.info("host disconnected during %s", req.method)
            except Exception:  # noqa: BLE001 - never let a bug kill the connection
                log.exception("internal error handling %s", req.method)
                ex.reply_error(RpcError(INTERNAL_ERROR, "Internal error"))
            finally:
                self.busy = False

    def _dispatch(self, ex: Exchange, req: Request) -> Any:
        self.method_counts[req.method] += 1
        method = req.method
        if method in PRE_AUTH:
            return getattr(self, f"_{method}")(ex, req)
        if self.keychain is None:
            raise RpcError(HW_LOCKED, "Cannot process message - hardware locked or uninitialized")
        handler = getattr(self, f"_m_{method}", None)
        if handler is not None:
            return handler(ex, req)
        if method in FOLLOW_UP_ONLY:
            raise RpcError(PROTOCOL_ERROR, "Unexpected method")
        raise RpcError(UNKNOWN_METHOD, "Unknown method")

    def require_keychain(self) -> Keychain:
        if self.keychain is None:
            raise RpcError(HW_LOCKED, "Cannot process message - hardware locked or uninitialized")
        return self.keychain

    def confirm(self, kind: str, details: dict[str, Any]) -> bool:
        """Show a prompt and wait for the buttons (the confirmation hook)."""
        prompt = Prompt(kind, details)
        self.prompts.append(prompt)
        del self.prompts[:-MAX_PROMPT_HISTORY]  # a long devnet run keeps only the recent ones
        accepted = bool(self.confirm_hook(prompt))
        prompt._decide(accepted)
        return accepted

    def save(self) -> None:
        if self.state_path is None:
            return
        mnemonic, passphrase = self.persisted if self.persisted else (None, None)
        save_state(self.state_path, StoredState(mnemonic, passphrase, self.network_type,
                                                self.registry.all()))

    def check_network(self, params: dict[str, Any]) -> str:
        """CHECK_NETWORK_CONSISTENT (process_utils.h)."""
        network = get_str(params, "network", MAX_NETWORK_NAME_LEN)
        if not networks.is_valid(network):
            raise RpcError(BAD_PARAMETERS, "Failed to extract valid network from parameters")
        assert network is not None
        if self.network_type and networks.network_type(network) != self.network_type:
            raise RpcError(NETWORK_MISMATCH, "Network type inconsistent with prior usage")
        return network

    def bitcoin_params(self, req: Request, on_liquid: str) -> tuple[dict[str, Any], str]:
        """A request's params and its consistent network; a liquid network is refused
        with `on_liquid`, the firmware's words for that call."""
        params = params_map(req.params)
        network = self.check_network(params)
        if networks.is_liquid(network):
            raise RpcError(BAD_PARAMETERS, on_liquid)
        return params, network

    def load_multisig(self, params: dict[str, Any]) -> MultisigRecord:
        """params_load_multisig (process_utils.c)."""
        name = get_str(params, "multisig_name", MAX_NAME_LEN + 1)
        if not name:
            raise RpcError(BAD_PARAMETERS, "Invalid multisig name parameter")
        record = self.registry.get(name, self.require_keychain().fingerprint)
        if record is None:
            raise RpcError(BAD_PARAMETERS, "Named multisig wallet does not exist for this signer")
        return record

    def multisig_paths(self, params: dict[str, Any]) -> tuple[MultisigRecord, list[list[int]]]:
        """The named multisig record and the signer paths given for it, one per signer."""
        record = self.load_multisig(params)
        raw = params.get("paths")
        paths = [path_from(p) for p in raw] if isinstance(raw, list) else []
        if len(paths) != len(record.signers) or any(p is None for p in paths):
            raise RpcError(BAD_PARAMETERS, "Failed to extract valid signer paths")
        return record, [p for p in paths if p is not None]

    def check_legacy_registration(self, path: list[int], script_bytes: bytes, index: int) -> None:
        """--require-registration for the legacy flow: a multisig script must be one
        a registered record builds at our path's unhardened tail."""
        if not self.options.require_registration or not _looks_multisig(script_bytes):
            return
        tail = unhardened_tail(path)
        for record in self.registry.for_wallet(self.require_keychain().fingerprint):
            try:
                scripts = record.scripts(record.pubkeys_at(tail))
            except Exception:  # noqa: BLE001 - hardened tail: this record cannot match
                continue
            if script_bytes in (scripts.witness_script, scripts.redeem_script):
                return
        raise RpcError(BAD_PARAMETERS,
                       f"Input {index} does not match any registered multisig wallet")

    # -- methods available before unlock (dashboard.c) ----------------------------

    def _get_version_info(self, ex: Exchange, req: Request) -> dict[str, Any]:
        """reply_version_info (dashboard.c); field list from docs/index.rst."""
        if self.keychain is not None:
            state = "READY"  # every TCP connection is the one 'message source'
        else:
            state = "LOCKED" if self.persisted else "UNINIT"
        return {
            "JADE_VERSION": FIRMWARE_VERSION, "JADE_OTA_MAX_CHUNK": 4096,
            "JADE_CONFIG": "NORADIO", "BOARD_TYPE": "EMULATOR", "JADE_FEATURES": "DEV",
            "IDF_VERSION": "v5.1.2", "CHIP_FEATURES": "32000000", "EFUSEMAC": "B1FA0000E0E0",
            "BATTERY_STATUS": 5, "JADE_STATE": state,
            "JADE_NETWORKS": self.network_type or "ALL",
            "JADE_HAS_PIN": self.persisted is not None,
        }

    def _add_entropy(self, ex: Exchange, req: Request) -> bool:
        params = params_map(req.params)
        if not get_bytes(params, "entropy"):
            raise RpcError(BAD_PARAMETERS, "Failed to extract valid entropy bytes from parameters")
        return True  # signing is RFC6979-deterministic; there is no pool to feed

    def _set_epoch(self, ex: Exchange, req: Request) -> bool:
        if get_uint(params_map(req.params), "epoch") is None:
            raise RpcError(BAD_PARAMETERS, "Failed to extract valid epoch value from parameters")
        return True

    def _logout(self, ex: Exchange, req: Request) -> bool:
        """keychain_clear(): keys leave memory; a saved wallet is then LOCKED."""
        self.keychain = None
        return True

    def _update_pinserver(self, ex: Exchange, req: Request) -> bool:
        params_map(req.params)
        return True  # there is no pinserver to talk to

    def _cancel(self, ex: Exchange, req: Request) -> Any:
        return NO_REPLY  # dashboard.c: 'cancel' is ignored, nothing is in progress

    def _auth_user(self, ex: Exchange, req: Request) -> bool:
        """auth_user.c: an unlocked wallet returns true at once (jadepy's auth_user then
        skips the pinserver dance); a locked saved wallet is unlocked as if the right
        PIN were entered. Production firmware then pins the network type."""
        params = params_map(req.params)
        network = self.check_network(params)
        if self.keychain is None:
            if self.persisted is None:
                # The real device would start on-screen wallet setup; we cannot.
                raise RpcError(HW_LOCKED, "No wallet set: load one with debug_set_mnemonic, "
                                          "--mnemonic-file or the state file")
            mnemonic, passphrase = self.persisted
            self.keychain = Keychain.from_mnemonic(mnemonic, passphrase)
        if self.network_type is None:
            self.network_type = networks.network_type(network)
            if not self.keychain.temporary:
                self.save()
        return True

    def _debug_set_mnemonic(self, ex: Exchange, req: Request) -> bool:
        """debug_set_mnemonic.c: a mnemonic (+passphrase) or a 32/64-byte seed."""
        params = params_map(req.params)
        temporary = bool(get_bool(params, "temporary_wallet"))
        if has_data(params, "seed"):
            seed = get_bytes(params, "seed")
            if seed is None or len(seed) not in (32, 64):
                raise RpcError(BAD_PARAMETERS, "Failed to extract valid seed from parameters")
            keychain = Keychain.from_seed(seed)
        else:
            mnemonic = params.get("mnemonic")
            if isinstance(mnemonic, bytes | bytearray):
                mnemonic = bytes(mnemonic).decode(errors="replace")
            if not isinstance(mnemonic, str) or not mnemonic:
                raise bad_params("Failed to extract mnemonic prefixes from parameters")
            passphrase = None
            if has_data(params, "passphrase"):
                passphrase = get_str(params, "passphrase", PASSPHRASE_MAX_LEN + 1)
                if passphrase is None:
                    raise bad_params("Failed to extract valid passphrase from parameters")
            try:
                keychain = Keychain.from_mnemonic(mnemonic, passphrase, temporary)
            except ValueError as exc:
                raise bad_params(
                    "Failed to expand mnemonic prefixes into full mnemonic words") from exc
        self.keychain = keychain
        self.network_type = None  # keychain_clear_network_type_restriction()
        if keychain.persistable is not None:
            self.persisted = keychain.persistable
            self.save()
        return True

    # -- methods that need the wallet unlocked -------------------------------------

    def _m_get_xpub(self, ex: Exchange, req: Request) -> str:
        """get_xpubs.c: the root (empty path) is allowed; xpub/tpub by network type."""
        params = params_map(req.params)
        network = self.check_network(params)
        path = get_path(params, "path")
        if path is None:
            raise RpcError(BAD_PARAMETERS, "Failed to extract valid path from parameters")
        return self.require_keychain().xpub(path, network)

    def _m_get_registered_multisigs(self, ex: Exchange, req: Request) -> dict[str, Any]:
        fingerprint = self.require_keychain().fingerprint
        return {r.name: r.summary() for r in self.registry.for_wallet(fingerprint)}

    def _m_get_registered_multisig(self, ex: Exchange, req: Request) -> dict[str, Any]:
        """get_registered_multisig.c: structured record, or the flat-file export."""
        params = params_map(req.params)
        name = _multisig_name(params)
        as_file = optional_bool(params, "as_file", "Failed to extract valid as_file parameter")
        record = self.registry.get(name, self.require_keychain().fingerprint)
        if record is None:
            raise RpcError(BAD_PARAMETERS, "Named multisig wallet does not exist for this signer")
        if not as_file:
            return record.details()
        lines = [f"Name: {record.name}",
                 f"Policy: {record.threshold} of {len(record.signers)}",
                 f"Format: {_FILE_FORMATS[record.variant]}"]
        for signer in record.signers:
            lines += ["", f"Derivation: {path_str(list(signer.derivation))}",
                      f"{signer.fingerprint.hex().upper()}: {signer.xpub}"]
        return {"multisig_name": record.name, "multisig_file": "\n".join(lines)}

    def _m_register_multisig(self, ex: Exchange, req: Request) -> bool:
        """register_multisig.c register_multisig_process() / register_multisig()."""
        params = params_map(req.params)
        if has_data(params, "multisig_file"):
            raise RpcError(BAD_PARAMETERS, "multisig_file registration is not emulated; "
                                           "pass the structured descriptor")
        self.check_network(params)
        name = _multisig_name(params)
        desc = params.get("descriptor")
        if not isinstance(desc, dict):
            raise RpcError(BAD_PARAMETERS, "Cannot extract multisig descriptor data")
        variant = get_str(desc, "variant", MAX_VARIANT_LEN)
        if variant not in VARIANT_WRAPPERS:
            raise RpcError(BAD_PARAMETERS, "Invalid script variant parameter")
        sorted_keys = optional_bool(desc, "sorted", "Invalid sorted flag value")
        blinding_key = None
        if has_data(desc, "master_blinding_key"):
            blinding_key = get_bytes(desc, "master_blinding_key")
            if blinding_key is None or len(blinding_key) != 32:
                raise RpcError(BAD_PARAMETERS, "Invalid blinding key value")
        threshold = get_uint(desc, "threshold")
        if not threshold or threshold > MAX_MULTISIG_SIGNERS:
            raise RpcError(BAD_PARAMETERS, "Invalid multisig threshold value")
        signers = _signers_from(desc.get("signers"))
        if len(signers) > MAX_MULTISIG_SIGNERS:
            raise RpcError(BAD_PARAMETERS, "Failed to extract co-signers")
        if threshold > len(signers):
            raise RpcError(BAD_PARAMETERS, "Invalid multisig threshold")
        keychain = self.require_keychain()
        _validate_signers(keychain, signers)
        record = MultisigRecord(name, variant, sorted_keys, threshold, tuple(signers),
                                keychain.fingerprint, blinding_key)
        existing = self.registry.existing(name)
        if existing is not None and existing.same_registration(record):
            return True  # "identical registration exists, returning immediately"
        if existing is None and not self.registry.has_free_slot():
            raise RpcError(BAD_PARAMETERS, "Already have maximum number of multisig wallets")
        details = {"multisig_name": name, "variant": variant, "sorted": sorted_keys,
                   "threshold": threshold, "num_signers": len(signers),
                   "overwriting": existing is not None,
                   "signers": [{"fingerprint": s.fingerprint.hex(),
                                "derivation": path_str(list(s.derivation)), "xpub": s.xpub}
                               for s in signers]}
        if not self.confirm("register_multisig", details):
            raise RpcError(USER_CANCELLED, "User declined to register multisig")
        self.registry.put(record)
        self.save()
        return True

    def _m_get_receive_address(self, ex: Exchange, req: Request) -> str:
        """get_receive_address.c: registered multisig or single-sig; user confirms."""
        params, network = self.bitcoin_params(req, "Liquid networks are not emulated")
        if get_bool(params, "confidential"):
            raise RpcError(BAD_PARAMETERS, "Confidential addresses only apply to liquid networks")
        keychain = self.require_keychain()
        warning = ""
        if has_data(params, "multisig_name"):
            record, paths = self.multisig_paths(params)
            if any(p != paths[0] for p in paths):
                warning = "Warning: signer paths differ"
            try:
                pubkeys = record.pubkeys_for(paths)
            except Exception as exc:  # noqa: BLE001 - hardened suffix on an xpub
                raise RpcError(BAD_PARAMETERS, "Failed to generate valid multisig script") from exc
            spk = record.scripts(pubkeys).script_pubkey
        else:
            variant = get_str(params, "variant", MAX_VARIANT_LEN)
            if variant is None:
                raise RpcError(BAD_PARAMETERS, "Green-multisig addresses are not emulated")
            if variant not in SINGLESIG_VARIANTS:
                raise RpcError(BAD_PARAMETERS, "Invalid script variant parameter")
            path = get_path(params, "path")
            if not path:
                raise RpcError(BAD_PARAMETERS, "Failed to extract valid path from parameters")
            builder, purpose = SINGLESIG_VARIANTS[variant]
            if not expected_singlesig_path(network, purpose, False, path):
                is_change = expected_singlesig_path(network, purpose, True, path)
                kind = "Change" if is_change else "Unusual"
                warning = f"Warning: {kind} path: {path_str(path)}"
            spk = builder(keychain.public_hdkey(path, network).key).data
        address = Script(spk).address(networks.embit_params(network))
        if not self.confirm("get_receive_address", {"address": address, "warning": warning}):
            raise RpcError(USER_CANCELLED, "User declined to confirm address")
        return address

    def _m_sign_message(self, ex: Exchange, req: Request) -> str:
        """sign_message.c: plain RFC6979 flow, the message-file flow and the
        anti-exfil flow (commitment, then get_signature with host entropy)."""
        params = params_map(req.params)
        keychain = self.require_keychain()
        if has_data(params, "message_file"):
            path, message = _parse_message_file(params.get("message_file"))
            if not self.confirm("sign_message", {"message": message, "path": path_str(path)}):
                raise RpcError(USER_CANCELLED, "User declined to sign message")
            return keychain.sign_message(path, message.encode())
        message = get_str(params, "message")
        if not message:
            raise RpcError(BAD_PARAMETERS, "Failed to extract message from parameters")
        path = get_path(params, "path")
        if not path:
            raise RpcError(BAD_PARAMETERS, "Failed to extract valid path from parameters")
        use_ae = has_data(params, "ae_host_commitment")
        if use_ae and len(get_bytes(params, "ae_host_commitment") or b"") != 32:
            raise bad_params("Failed to extract valid host commitment from parameters")
        auto = (path == [GDK_CHALLENGE_PATH] and len(message) == 32
                and message.startswith(GDK_CHALLENGE_PREFIX))
        if not auto and not self.confirm("sign_message", {"message": message,
                                                          "path": path_str(path)}):
            raise RpcError(USER_CANCELLED, "User declined to sign message")
        if use_ae:
            commitment, _ = keychain.nonce_commitment(path, message_hash(message.encode()))
            ex.reply(commitment)
            follow = ex.next_message()
            if follow.method != "get_signature":
                raise RpcError(PROTOCOL_ERROR, "Unexpected message, expecting 'get_signature'")
            entropy = get_bytes(params_map(follow.params), "ae_host_entropy")
            if entropy is None or len(entropy) != 32:
                raise RpcError(BAD_PARAMETERS, "Failed to extract host entropy from parameters")
        return keychain.sign_message(path, message.encode())

    def _m_sign_psbt(self, ex: Exchange, req: Request) -> Any:
        """sign_psbt.c sign_psbt_process(): sign, then reply in 3008-byte chunks
        fetched with get_extended_data (jadepy JadeAPI.sign_psbt reassembles them)."""
        params, network = self.bitcoin_params(req, SIGN_ON_LIQUID)
        psbt_bytes = get_bytes(params, "psbt")
        if not psbt_bytes:
            raise RpcError(BAD_PARAMETERS, "Failed to extract psbt bytes from parameters")
        keychain = self.require_keychain()
        psbt = parse_psbt(psbt_bytes)
        plan = plan_signing(keychain, self.registry, network, psbt,
                            self.options.require_registration)
        if not self.confirm("sign_psbt", prompt_details(plan, network)):
            raise RpcError(USER_CANCELLED, "User declined to sign psbt")
        signed = sign_plan(keychain, plan, self.options.script_limit)

        chunks = [signed[i:i + PSBT_OUT_CHUNK_SIZE]
                  for i in range(0, len(signed), PSBT_OUT_CHUNK_SIZE)] or [b""]
        original_id = req.id
        for seqnum, chunk in enumerate(chunks, start=1):
            ex.reply(chunk, seqnum=seqnum, seqlen=len(chunks))
            if seqnum == len(chunks):
                break
            follow = ex.next_message()
            if follow.method != "get_extended_data":
                raise RpcError(PROTOCOL_ERROR, "Unexpected message, expecting 'get_extended_data'")
            fp = follow.params if isinstance(follow.params, dict) else {}
            if (fp.get("origid"), fp.get("orig"), fp.get("seqnum"), fp.get("seqlen")) != (
                    original_id, "sign_psbt", seqnum + 1, len(chunks)):
                raise RpcError(PROTOCOL_ERROR, "Mismatched fields in 'get_extended_data' message")
        return NO_REPLY

    def _m_sign_tx(self, ex: Exchange, req: Request) -> Any:
        params, network = self.bitcoin_params(req, SIGN_ON_LIQUID)
        run_sign_tx(self, ex, network, params)
        return NO_REPLY


def _multisig_name(params: dict[str, Any]) -> str:
    """The multisig_name of get_registered_multisig and register_multisig."""
    name = get_str(params, "multisig_name", MAX_NAME_LEN + 1)
    if not name or not name_valid(name):
        raise RpcError(BAD_PARAMETERS, "Missing or invalid multisig name parameter")
    return name


def _looks_multisig(data: bytes) -> bool:
    """OP_k <pubkeys...> <n> OP_CHECKMULTISIG, judged by its ends."""
    return len(data) >= 37 and 0x51 <= data[0] <= 0x60 and data[-1] == 0xAE


def _signers_from(value: Any) -> list[Signer]:
    """get_signers_allocate (register_multisig.c)."""
    fail = RpcError(BAD_PARAMETERS, "Failed to extract valid co-signers from parameters")
    if not isinstance(value, list) or not value:
        raise fail
    signers = []
    for item in value:
        if not isinstance(item, dict):
            raise fail
        fingerprint = get_bytes(item, "fingerprint")
        derivation = path_from(item.get("derivation"))
        xpub = get_str(item, "xpub", 120)
        path = path_from(item.get("path"))
        if fingerprint is None or len(fingerprint) != 4 or derivation is None or not xpub \
                or path is None:
            raise fail
        signers.append(Signer(fingerprint, tuple(derivation), xpub, tuple(path)))
    return signers


def _validate_signers(keychain: Keychain, signers: list[Signer]) -> None:
    """multisig_validate_signers (multisig.c): unhardened extra paths, our signer
    present, and our xpub's pubkey and chain code as derived at its derivation."""
    fail = RpcError(BAD_PARAMETERS, "Failed to validate co-signers")
    found = False
    for signer in signers:
        if any(p & HARDENED for p in signer.path):
            raise fail
        if signer.fingerprint == keychain.fingerprint:
            try:
                given = bip32.HDKey.from_base58(signer.xpub)
            except Exception as exc:  # noqa: BLE001
                raise fail from exc
            ours = keychain.public_hdkey(list(signer.derivation), "mainnet")
            if given.key.sec() != ours.key.sec() or given.chain_code != ours.chain_code:
                raise fail
            found = True
    if not found:
        raise fail
    for signer in signers:
        try:
            bip32.HDKey.from_base58(signer.xpub).derive(list(signer.path))
        except Exception as exc:  # noqa: BLE001 - multisig_data_to_bytes failure
            raise RpcError(INTERNAL_ERROR, "Failed to serialise multisig") from exc


def _parse_message_file(value: Any) -> tuple[list[int], str]:
    """sign_message_file(): 'signmessage <path> ascii:<message>'."""
    if not isinstance(value, str) or not value:
        raise RpcError(BAD_PARAMETERS, "Invalid sign message file data")
    prefix, _, rest = value.partition(" ")
    if prefix.lower() != "signmessage":
        raise RpcError(BAD_PARAMETERS, "Invalid prefix")
    path_text, _, rest = rest.partition(" ")
    try:
        path = bip32.parse_path(path_text.replace("H", "h"))
    except Exception as exc:  # noqa: BLE001
        raise RpcError(BAD_PARAMETERS, "Invalid bip32 path") from exc
    if not path or len(path) > 16:
        raise RpcError(BAD_PARAMETERS, "Invalid bip32 path")
    label, sep, message = rest.partition(":")
    if not sep or label.lower() != "ascii":
        raise RpcError(BAD_PARAMETERS, "Invalid message prefix")
    if not message:
        raise RpcError(BAD_PARAMETERS, "Invalid message bytes")
    return path, message
