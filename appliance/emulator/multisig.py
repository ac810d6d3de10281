"""Registered multisig wallets: the records, their limits, and script matching.

Follows main/multisig.c, main/multisig.h and main/process/register_multisig.c:
at most MAX_MULTISIG_REGISTRATIONS (16) records, each of at most
MAX_MULTISIG_SIGNERS (15) signers, names of 1-15 printable ASCII characters,
and each record bound to the wallet that registered it (the firmware HMACs the
record with the wallet master key; here the record carries its fingerprint).
Scripts are built with embit descriptors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from embit import bip32
from embit.descriptor import Descriptor

MAX_MULTISIG_REGISTRATIONS = 16
MAX_MULTISIG_SIGNERS = 15
MAX_NAME_LEN = 15  # NVS_KEY_NAME_MAX_SIZE (16) including the NUL

# The variants register_multisig accepts (docs/index.rst register_multisig request)
# and the descriptor wrappers each stands for.
VARIANT_WRAPPERS = {
    "sh(multi(k))": ("sh(", ")"),
    "wsh(multi(k))": ("wsh(", ")"),
    "sh(wsh(multi(k)))": ("sh(wsh(", "))"),
}


def name_valid(name: str) -> bool:
    """storage_key_name_valid (main/storage.c): 1-15 chars, each isgraph()."""
    return 0 < len(name) <= MAX_NAME_LEN and all(33 <= ord(c) <= 126 for c in name)


@dataclass(frozen=True)
class Scripts:
    """The scripts of one multisig address: scriptPubKey plus redeem/witness scripts."""

    script_pubkey: bytes
    redeem_script: bytes | None
    witness_script: bytes | None


def build_scripts(variant: str, sorted_keys: bool, threshold: int,
                  pubkeys: Sequence[bytes]) -> Scripts:
    """wallet_build_multisig_script(): the variant's scripts for these pubkeys."""
    prefix, suffix = VARIANT_WRAPPERS[variant]
    func = "sortedmulti" if sorted_keys else "multi"
    keys = ",".join(pk.hex() for pk in pubkeys)
    desc = Descriptor.from_string(f"{prefix}{func}({threshold},{keys}){suffix}")
    redeem = desc.redeem_script()
    witness = desc.witness_script()
    return Scripts(
        desc.script_pubkey().data,
        redeem.data if redeem is not None else None,
        witness.data if witness is not None else None,
    )


@dataclass(frozen=True)
class Signer:
    """A co-signer as passed to register_multisig (docs: fingerprint, derivation, xpub, path)."""

    fingerprint: bytes
    derivation: tuple[int, ...]
    xpub: str
    path: tuple[int, ...] = ()

    def to_rpc(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "derivation": list(self.derivation),
                "xpub": self.xpub, "path": list(self.path)}

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint.hex(), "derivation": list(self.derivation),
                "xpub": self.xpub, "path": list(self.path)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Signer:
        return cls(bytes.fromhex(data["fingerprint"]), tuple(data["derivation"]),
                   data["xpub"], tuple(data.get("path", ())))


@dataclass(frozen=True)
class MultisigRecord:
    """One registration, bound to the wallet (fingerprint) that made it."""

    name: str
    variant: str
    sorted: bool
    threshold: int
    signers: tuple[Signer, ...]
    wallet_fingerprint: bytes
    master_blinding_key: bytes | None = None
    _cache: dict[tuple[int, ...], list[bytes]] = field(
        default_factory=dict, compare=False, repr=False, hash=False)
    _script_cache: dict[tuple[bytes, ...], Scripts] = field(
        default_factory=dict, compare=False, repr=False, hash=False)

    def same_registration(self, other: MultisigRecord) -> bool:
        """register_multisig.c: an identical record makes re-registration a no-op."""
        return (self.variant, self.sorted, self.threshold, self.signers,
                self.master_blinding_key, self.wallet_fingerprint) == (
            other.variant, other.sorted, other.threshold, other.signers,
            other.master_blinding_key, other.wallet_fingerprint)

    @cached_property
    def parent_keys(self) -> list[bip32.HDKey]:
        """Each signer's xpub with its fixed 'path' applied (multisig.c read_complete_signers)."""
        return [bip32.HDKey.from_base58(s.xpub).derive(list(s.path)) for s in self.signers]

    def pubkeys_at(self, suffix: Sequence[int]) -> list[bytes]:
        """Signer pubkeys with one common path suffix (sign_psbt.c change checks)."""
        key = tuple(suffix)
        if key not in self._cache:
            self._cache[key] = [k.derive(list(suffix)).sec() for k in self.parent_keys]
        return self._cache[key]

    def pubkeys_for(self, paths: Sequence[Sequence[int]]) -> list[bytes]:
        """Signer pubkeys with one suffix per signer (get_receive_address 'paths')."""
        return [k.derive(list(p)).sec() for k, p in zip(self.parent_keys, paths, strict=True)]

    def scripts(self, pubkeys: Sequence[bytes]) -> Scripts:
        """Built once per key list: the device checks the same wallet on every signature."""
        key = tuple(pubkeys)
        cache = self._script_cache
        if key not in cache:
            cache[key] = build_scripts(self.variant, self.sorted, self.threshold, pubkeys)
        return cache[key]

    def matches(self, suffix: Sequence[int], keys_in_map: Iterable[bytes],
                script_pubkey: bytes) -> bool:
        """verify_multisig_script_matches (sign_psbt.c): same signer count, every
        derived key present in the PSBT keymap, and the built script equal."""
        keys = set(keys_in_map)
        if len(keys) != len(self.signers):
            return False
        try:
            pubkeys = self.pubkeys_at(suffix)
        except Exception:  # noqa: BLE001 - hardened suffix or bad xpub: no match
            return False
        if not all(pk in keys for pk in pubkeys):
            return False
        return self.scripts(pubkeys).script_pubkey == script_pubkey

    def summary(self) -> dict[str, Any]:
        """An entry of the get_registered_multisigs reply (docs/index.rst)."""
        return {"variant": self.variant, "sorted": self.sorted, "threshold": self.threshold,
                "num_signers": len(self.signers), "master_blinding_key": self.master_blinding_key}

    def details(self) -> dict[str, Any]:
        """The get_registered_multisig reply (get_registered_multisig.c)."""
        return {"multisig_name": self.name, "descriptor": {
            "variant": self.variant, "sorted": self.sorted, "threshold": self.threshold,
            "master_blinding_key": self.master_blinding_key or b"",
            "signers": [s.to_rpc() for s in self.signers]}}

    def to_json(self) -> dict[str, Any]:
        mbk = self.master_blinding_key
        return {"name": self.name, "variant": self.variant, "sorted": self.sorted,
                "threshold": self.threshold, "wallet_fingerprint": self.wallet_fingerprint.hex(),
                "master_blinding_key": mbk.hex() if mbk else None,
                "signers": [s.to_json() for s in self.signers]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MultisigRecord:
        mbk = data.get("master_blinding_key")
        return cls(data["name"], data["variant"], bool(data["sorted"]), int(data["threshold"]),
                   tuple(Signer.from_json(s) for s in data["signers"]),
                   bytes.fromhex(data["wallet_fingerprint"]),
                   bytes.fromhex(mbk) if mbk else None)


class MultisigRegistry:
    """The device's multisig storage (all wallets share the 16 slots, like NVS)."""

    def __init__(self, records: Iterable[MultisigRecord] = ()) -> None:
        self._records: dict[str, MultisigRecord] = {r.name: r for r in records}

    def __len__(self) -> int:
        return len(self._records)

    def all(self) -> list[MultisigRecord]:
        return list(self._records.values())

    def existing(self, name: str) -> MultisigRecord | None:
        return self._records.get(name)

    def for_wallet(self, fingerprint: bytes) -> list[MultisigRecord]:
        """multisig_get_valid_record_names(): only records valid for this wallet."""
        return [r for r in self._records.values() if r.wallet_fingerprint == fingerprint]

    def get(self, name: str, fingerprint: bytes) -> MultisigRecord | None:
        record = self._records.get(name)
        return record if record is not None and record.wallet_fingerprint == fingerprint else None

    def has_free_slot(self) -> bool:
        return len(self._records) < MAX_MULTISIG_REGISTRATIONS

    def put(self, record: MultisigRecord) -> None:
        self._records[record.name] = record
