"""The epoch's multisig: wsh(sortedmulti(k, K1..Kn)) from the record's keys.

Each Ki is the record's BIP48 account xpub at /0/0, so every epoch has fresh keys.
A record whose script is "tr-sortedmulti_a" gets bftanchor.tapscript's
TapscriptMultisig from the same constructor, so callers need not know which it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from embit.ec import PublicKey
from embit.psbt import DerivationPath
from embit.script import Script, multisig, p2wsh

from bftanchor.epoch import EpochRecord
from bftanchor.errors import DescriptorError

# Consensus caps CHECKMULTISIG at 20 keys; a larger script is unspendable forever.
MAX_CHECKMULTISIG_KEYS = 20
OP_CHECKMULTISIG = 0xAE


def _script_number(n: int) -> bytes:
    """A small number as a script push: OP_1..OP_16, else a one-byte minimal push."""
    if 1 <= n <= 16:
        return bytes([0x50 + n])
    if 17 <= n <= 0x7F:
        return bytes([1, n])
    raise ValueError(f"{n} is out of range for a multisig count")
KEY_TAIL = (0, 0)


@dataclass(frozen=True)
class MultisigKey:
    validator_id: str
    pubkey: PublicKey
    fingerprint: bytes
    path: tuple[int, ...]

    @property
    def derivation(self) -> DerivationPath:
        return DerivationPath(self.fingerprint, list(self.path))


@dataclass(frozen=True)
class EpochMultisig:
    """The script that locks the coin during one epoch."""

    record: EpochRecord

    def __new__(cls, record: EpochRecord | None = None) -> EpochMultisig:
        if cls is EpochMultisig and record is not None and record.is_taproot:
            from bftanchor.tapscript import TapscriptMultisig

            return object.__new__(TapscriptMultisig)
        return object.__new__(cls)

    def __post_init__(self) -> None:
        if self.record.is_taproot:
            raise DescriptorError(f"epoch {self.record.epoch} is a tapscript epoch")
        if self.record.n > MAX_CHECKMULTISIG_KEYS:
            raise DescriptorError(
                f"epoch {self.record.epoch} has {self.record.n} keys; wsh(sortedmulti) allows at "
                f"most {MAX_CHECKMULTISIG_KEYS} (consensus limit of CHECKMULTISIG)"
            )
        if not 1 <= self.record.threshold <= self.record.n:
            raise DescriptorError(f"epoch {self.record.epoch}: threshold out of range")

    @property
    def epoch(self) -> int:
        return self.record.epoch

    @property
    def is_taproot(self) -> bool:
        return False

    @property
    def script(self) -> str:
        return self.record.script

    @staticmethod
    def _key_order(pub: PublicKey) -> bytes:
        return pub.sec()  # BIP67

    @property
    def threshold(self) -> int:
        return self.record.threshold

    @cached_property
    def keys(self) -> tuple[MultisigKey, ...]:
        """Keys in script order: BIP67 for wsh, x-only for sortedmulti_a."""
        out = []
        for v in self.record.validators:
            key = v.key
            child = key.key.derive(list(KEY_TAIL))
            out.append(
                MultisigKey(
                    validator_id=v.id,
                    pubkey=child.key,
                    fingerprint=key.origin.fingerprint,
                    path=tuple(key.origin.derivation) + KEY_TAIL,
                )
            )
        return tuple(sorted(out, key=lambda k: self._key_order(k.pubkey)))

    @cached_property
    def member_keys(self) -> frozenset[bytes]:
        """The keys (compressed, as bytes) whose signatures count toward k."""
        return frozenset(k.pubkey.sec() for k in self.keys)

    @cached_property
    def witness_script(self) -> Script:
        """<k> <K1>..<Kn> <n> OP_CHECKMULTISIG, numbers encoded as Bitcoin Core does.

        embit's multisig() stops at 16 keys (OP_16); above that k and n are minimal
        script-number pushes (0x01 0x11 for 17), which CHECKMULTISIG reads the same way.
        """
        keys = [k.pubkey for k in self.keys]
        if self.record.n <= 16:
            return multisig(self.threshold, keys)
        data = _script_number(self.threshold)
        for key in keys:
            sec = key.sec()
            data += bytes([len(sec)]) + sec
        return Script(data + _script_number(len(keys)) + bytes([OP_CHECKMULTISIG]))

    @cached_property
    def script_pubkey(self) -> Script:
        return p2wsh(self.witness_script)

    def descriptor(self) -> str:
        """Output descriptor with key origins, as wallets and devices import it."""
        parts = ",".join(v.pow_key + "/0/0" for v in self.record.validators)
        return f"wsh(sortedmulti({self.threshold},{parts}))"

    def address(self, net: dict) -> str:
        return self.script_pubkey.address(net)

    def bip32_derivations(self) -> dict[PublicKey, DerivationPath]:
        return {k.pubkey: k.derivation for k in self.keys}

    @cached_property
    def input_origins(self) -> dict[bytes, tuple]:
        """The key origins the coin input of a PSBT must carry (BIP32 derivations for
        wsh, BIP371 tap derivations for tapscript), compared by value: see origins()."""
        ders = (self.tap_derivations()  # type: ignore[attr-defined]
                if self.is_taproot else self.bip32_derivations())
        return origins(ders)

    def key_for(self, validator_id: str) -> MultisigKey:
        for k in self.keys:
            if k.validator_id == validator_id:
                return k
        raise KeyError(validator_id)


_CACHE: dict[int, tuple[EpochRecord, EpochMultisig]] = {}
_CACHE_MAX = 64


def origins(derivations: Mapping[PublicKey, Any]) -> dict[bytes, tuple]:
    """PSBT key derivations as plain values keyed by the serialized key: embit's objects
    compare by serializing both sides, a cost paid per key per request."""
    out: dict[bytes, tuple] = {}
    for key, v in derivations.items():
        if isinstance(v, DerivationPath):
            out[key.sec()] = (bytes(v.fingerprint), tuple(v.derivation))
        else:  # BIP371: ([leaf hash], origin)
            leaves, der = v
            out[key.sec()] = (tuple(bytes(h) for h in leaves), bytes(der.fingerprint),
                              tuple(der.derivation))
    return out


def multisig_for(record: EpochRecord) -> EpochMultisig:
    """The record's multisig, derived once per record object (keys cost pure-Python EC math).

    Keyed by the object's id and holding the object itself, so an id is never reused
    while its entry lives.
    """
    hit = _CACHE.get(id(record))
    if hit is not None and hit[0] is record:
        return hit[1]
    ms = EpochMultisig(record)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[id(record)] = (record, ms)
    return ms
