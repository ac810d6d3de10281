"""Reading a PSBT with each public key parsed once per process.

A checkpoint PSBT names every validator key of two epochs (input 0's derivations,
output 1's), the same keys round after round. embit parses each one from scratch (a
square root in libsecp256k1 behind a process-wide lock) and re-serializes both sides
of every comparison of two keys, which together cost the appliance more than the
rest of reading the PSBT. Here a key is parsed once per distinct serialization and
keeps that serialization, and a key origin once per distinct value.

Otherwise every field is read, and every malformed or duplicated field refused, as
embit's own reader does (tests/test_psbtread.py holds the two readers to the same
answers, good and bad). The one difference: a BIP 371 leaf count larger than its
value can hold is refused before it is read, where embit would first try to read
that many hashes (see _tap_derivation).
"""

from __future__ import annotations

from functools import lru_cache
from io import BytesIO

from embit import compact, ec
from embit.psbt import PSBT, DerivationPath, InputScope, OutputScope, PSBTError, read_string

# Enough for the keys of many epochs; a miss only parses again.
_KEY_CACHE_SIZE = 8192


class Key(ec.PublicKey):
    """A public key that keeps its serialization: embit's compare and hash through it."""

    _sec: bytes | None = None

    def sec(self) -> bytes:
        if self._sec is None:
            self._sec = super().sec()
        return self._sec


@lru_cache(maxsize=_KEY_CACHE_SIZE)
def _key(sec: bytes) -> Key:
    """Parsed once per serialization; a Key is never changed after it is made."""
    key = Key.parse(sec)
    key.sec()
    return key


@lru_cache(maxsize=_KEY_CACHE_SIZE)
def _xonly(x: bytes) -> Key:
    key = Key.from_xonly(x)
    key.sec()
    return key


@lru_cache(maxsize=_KEY_CACHE_SIZE)
def _origin(v: bytes) -> tuple[bytes, tuple[int, ...]]:
    der = DerivationPath.parse(v)
    return der.fingerprint, tuple(der.derivation)


# Origins up to this long (a fingerprint and 16 path steps) are cached: the cache holds
# what senders wrote, so a long value is parsed each time instead of kept.
_ORIGIN_CACHED_BYTES = 4 + 4 * 16


def _derivation(v: bytes) -> DerivationPath:
    """A key's origin as embit reads it, parsed once per value: a new object each time
    (DerivationPath holds a list), built from the cached parse."""
    if len(v) > _ORIGIN_CACHED_BYTES:
        return DerivationPath.parse(v)
    fingerprint, path = _origin(v)
    return DerivationPath(fingerprint, list(path))


def _tap_derivation(v: bytes) -> tuple[list[bytes], DerivationPath]:
    """BIP 371's value for a key: the leaf hashes it signs for, then its origin.

    The count is checked against the bytes that follow before any hash is read: embit
    reads `count` times, and a count of 2**60 in a 40-byte value (from whoever sent the
    PSBT) would fill the appliance's memory with empty reads before its length check
    refused it. Refused here with embit's own error, which is embit's answer whenever
    it has one (tests/test_psbtread.py)."""
    b = BytesIO(v)
    count = compact.read_from(b)
    if count > (len(v) - b.tell()) // 32:
        raise PSBTError("Invalid length of taproot leaf hashes")
    leaf_hashes = [b.read(32) for _ in range(count)]
    return leaf_hashes, DerivationPath.read_from(b)


def _put_origin(derivations: dict, k: bytes, v: bytes) -> None:
    """A BIP 32 derivation (PSBT_IN 0x06, PSBT_OUT 0x02): a key given twice is refused."""
    pub = _key(k[1:])
    if pub in derivations:
        raise PSBTError("Duplicated derivation path")
    derivations[pub] = _derivation(v)


def _put_tap_origin(derivations: dict, k: bytes, v: bytes) -> None:
    """A BIP 371 derivation (PSBT_IN 0x16, PSBT_OUT 0x07): embit keeps the first given."""
    pub = _xonly(k[1:])
    if pub not in derivations:
        derivations[pub] = _tap_derivation(v)


class _Input(InputScope):
    def read_value(self, stream, k):  # type: ignore[no-untyped-def]
        kind = k[:1]
        if kind == b"\x06":  # PSBT_IN_BIP32_DERIVATION
            _put_origin(self.bip32_derivations, k, read_string(stream))
        elif kind == b"\x02" and not self.compress:  # PSBT_IN_PARTIAL_SIG
            v = read_string(stream)
            pub = _key(k[1:])
            if pub in self.partial_sigs:
                raise PSBTError("Duplicated partial sig")
            self.partial_sigs[pub] = v
        elif kind == b"\x14":  # PSBT_IN_TAP_SCRIPT_SIG
            v = read_string(stream)
            if len(k) != 65:
                raise PSBTError("Invalid key length")
            pub, leaf = _xonly(k[1:33]), k[33:]
            if (pub, leaf) in self.taproot_sigs:
                raise PSBTError("Duplicated taproot sig")
            self.taproot_sigs[(pub, leaf)] = v
        elif kind == b"\x16":  # PSBT_IN_TAP_BIP32_DERIVATION
            _put_tap_origin(self.taproot_bip32_derivations, k, read_string(stream))
        else:
            super().read_value(stream, k)


class _Output(OutputScope):
    def read_value(self, stream, k):  # type: ignore[no-untyped-def]
        kind = k[:1]
        if kind == b"\x02":  # PSBT_OUT_BIP32_DERIVATION
            _put_origin(self.bip32_derivations, k, read_string(stream))
        elif kind == b"\x07":  # PSBT_OUT_TAP_BIP32_DERIVATION
            _put_tap_origin(self.taproot_bip32_derivations, k, read_string(stream))
        else:
            super().read_value(stream, k)


class KeyedPSBT(PSBT):
    PSBTIN_CLS = _Input
    PSBTOUT_CLS = _Output


def read_psbt(b64: str) -> PSBT:
    """A base64 PSBT, read as embit reads it (raising what embit raises)."""
    return KeyedPSBT.from_string(b64)


def read_psbt_bytes(raw: bytes) -> PSBT:
    """A serialized PSBT, read as embit's PSBT.parse reads it."""
    return KeyedPSBT.parse(raw)
