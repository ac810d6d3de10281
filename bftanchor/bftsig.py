"""secp256k1 ECDSA in the BFT chain's wire form: 64-byte compact r||s, low-s.

Signing uses embit's libsecp256k1 binding. Verification, the appliance's hot path
(k signatures per QC), calls libsecp256k1 through coincurve's cffi binding when it is
installed and through embit's otherwise: both are the same C library with the same
verification rules, but coincurve bundles a newer build whose verify is ~25% faster
on x86-64 and its cffi call costs less than embit's locked ctypes wrappers. Parsed
public keys are cached by their bytes, since a QC is checked against the same epoch
keys again and again and parsing a compressed key costs a square root.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from embit.util import secp256k1

from bftanchor.errors import BadSignature, HighSSignature

# Half the group order: s above it is the malleable twin of a valid signature.
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _N // 2
# The same bounds as 32-byte big-endian strings: for equal-length byte strings the
# lexicographic order is the numeric order, so range checks need no int conversion.
_N_BYTES = _N.to_bytes(32, "big")
_HALF_N_BYTES = _HALF_N.to_bytes(32, "big")
_ZERO = bytes(32)
# Enough for every validator key of many epochs; a miss only costs a re-parse.
_PUBKEY_CACHE_SIZE = 4096

try:
    from coincurve._libsecp256k1 import ffi as _ffi
    from coincurve._libsecp256k1 import lib as _lib
    from coincurve.context import GLOBAL_CONTEXT as _CC_CONTEXT

    _CTX = _CC_CONTEXT.ctx
    VERIFY_BACKEND = "coincurve"
except (ImportError, AttributeError):  # pragma: no cover - depends on what is installed
    VERIFY_BACKEND = "embit"


def sign_compact(secret: bytes, digest: bytes) -> bytes:
    """Deterministic (RFC 6979) low-s signature of a 32-byte digest."""
    if len(secret) != 32 or len(digest) != 32:
        raise ValueError("secret and digest must be 32 bytes each")
    sig = secp256k1.ecdsa_sign(digest, secret)
    return secp256k1.ecdsa_signature_serialize_compact(sig)


def pubkey_from_secret(secret: bytes) -> bytes:
    """Compressed (33-byte) public key of a secret."""
    return secp256k1.ec_pubkey_serialize(secp256k1.ec_pubkey_create(secret))


if VERIFY_BACKEND == "coincurve":

    @lru_cache(maxsize=_PUBKEY_CACHE_SIZE)
    def _parse_pubkey(pubkey: bytes) -> Any:
        if len(pubkey) not in (33, 65):
            raise ValueError(f"public key is {len(pubkey)} bytes, expected 33 or 65")
        parsed = _ffi.new("secp256k1_pubkey *")
        if not _lib.secp256k1_ec_pubkey_parse(_CTX, parsed, pubkey, len(pubkey)):
            raise ValueError("public key is not a point on the curve")
        return parsed

    def _verify(pubkey: bytes, digest: bytes, sig64: bytes) -> bool:
        point = _parse_pubkey(pubkey)
        parsed = _ffi.new("secp256k1_ecdsa_signature *")
        if not _lib.secp256k1_ecdsa_signature_parse_compact(_CTX, parsed, sig64):
            raise ValueError("compact signature does not parse")
        return bool(_lib.secp256k1_ecdsa_verify(_CTX, parsed, digest, point))

    def _verify_der(pubkey: bytes, digest: bytes, der: bytes) -> bool:
        point = _parse_pubkey(pubkey)
        parsed = _ffi.new("secp256k1_ecdsa_signature *")
        if not _lib.secp256k1_ecdsa_signature_parse_der(_CTX, parsed, der, len(der)):
            raise ValueError("signature does not parse as DER")
        return bool(_lib.secp256k1_ecdsa_verify(_CTX, parsed, digest, point))

else:  # pragma: no cover - exercised only where coincurve is absent

    @lru_cache(maxsize=_PUBKEY_CACHE_SIZE)
    def _parse_pubkey(pubkey: bytes) -> Any:
        return secp256k1.ec_pubkey_parse(pubkey)

    def _verify(pubkey: bytes, digest: bytes, sig64: bytes) -> bool:
        point = _parse_pubkey(pubkey)
        parsed = secp256k1.ecdsa_signature_parse_compact(sig64)
        return secp256k1.ecdsa_verify(parsed, digest, point)

    def _verify_der(pubkey: bytes, digest: bytes, der: bytes) -> bool:
        point = _parse_pubkey(pubkey)
        parsed = secp256k1.ecdsa_signature_parse_der(der)
        return secp256k1.ecdsa_verify(parsed, digest, point)


if VERIFY_BACKEND == "coincurve":

    def _sign_der(secret: bytes, digest: bytes, extra: bytes | None) -> bytes:
        sig = _ffi.new("secp256k1_ecdsa_signature *")
        ndata = _ffi.NULL if extra is None else extra
        if not _lib.secp256k1_ecdsa_sign(_CTX, sig, digest, secret, _ffi.NULL, ndata):
            raise ValueError("secret key is not valid")
        out = _ffi.new("unsigned char[72]")
        size = _ffi.new("size_t *", 72)
        _lib.secp256k1_ecdsa_signature_serialize_der(_CTX, out, size, sig)
        return bytes(_ffi.buffer(out, size[0]))

else:  # pragma: no cover - exercised only where coincurve is absent

    def _sign_der(secret: bytes, digest: bytes, extra: bytes | None) -> bytes:
        sig = secp256k1.ecdsa_sign(digest, secret, None, extra)
        return secp256k1.ecdsa_signature_serialize_der(sig)


# embit's grinding bound (ec.PrivateKey.sign): the loop ends by then in practice.
_GRIND_LIMIT = 200


def sign_der(secret: bytes, digest: bytes) -> bytes:
    """A PoW input's ECDSA signature, DER without the sighash byte, byte for byte what
    embit's PrivateKey.sign makes: RFC 6979, low s, and the nonce ground with a little-
    endian counter as extra entropy (as Bitcoin Core does) until the DER is at most 70
    bytes. Called through coincurve's binding when present: the signer's hot path."""
    if len(secret) != 32 or len(digest) != 32:
        raise ValueError("secret and digest must be 32 bytes each")
    der = _sign_der(secret, digest, None)
    counter = 1
    while len(der) > 70 and counter <= _GRIND_LIMIT:
        der = _sign_der(secret, digest, counter.to_bytes(32, "little"))
        counter += 1
    return der


def verify_der(pubkey: bytes, digest: bytes, der: bytes) -> bool:
    """A DER signature (a PSBT's partial signature, sighash byte removed) by a compressed
    key of a 32-byte digest, as libsecp256k1 verifies it (a high-s signature does not
    verify). Raises ValueError if the signature or the key does not parse."""
    if len(digest) != 32:
        raise ValueError(f"digest is {len(digest)} bytes, expected 32")
    return _verify_der(bytes(pubkey), bytes(digest), bytes(der))


# From this many signatures on, a QC's are checked on two threads: libsecp256k1 runs
# without the GIL (cffi releases it), so two cores verify at once; below it, waking the
# second thread costs more than the signatures it takes (bench/qc_verify.py).
PARALLEL_FROM = 6
_helper: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()
# Read once: os.cpu_count() asks the kernel each time (some 6 us, per QC).
_CPUS = os.cpu_count() or 1


def _second_thread() -> ThreadPoolExecutor | None:
    global _helper
    if VERIFY_BACKEND != "coincurve" or _CPUS < 2:
        return None  # embit's binding holds one lock for every call: nothing to gain
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(1, thread_name_prefix="bftsig-verify")
        return _helper


def _problem(item: tuple[bytes, bytes, bytes]) -> Exception | None:
    try:
        verify_compact(*item)
    except Exception as exc:  # BadSignature or HighSSignature, named by verify_qc
        return exc
    return None


def verify_each(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[Exception | None]:
    """verify_compact on each (pubkey, digest, sig64): each one's error, or None. Every
    item is checked (no early stop), so the answer does not depend on the threads."""
    helper = _second_thread() if len(items) >= PARALLEL_FROM else None
    if helper is None:
        return [_problem(i) for i in items]
    half = len(items) // 2
    first = helper.submit(lambda: [_problem(i) for i in items[:half]])
    rest = [_problem(i) for i in items[half:]]
    return first.result() + rest


def verify_compact(pubkey: bytes, digest: bytes, sig64: bytes) -> None:
    """Raise HighSSignature or BadSignature unless sig64 is a valid low-s signature."""
    if len(sig64) != 64:
        raise BadSignature(f"signature is {len(sig64)} bytes, expected 64")
    sig = bytes(sig64)
    r, s = sig[:32], sig[32:]
    if r == _ZERO or s == _ZERO or r >= _N_BYTES or s >= _N_BYTES:
        raise BadSignature("signature r or s out of range")
    if s > _HALF_N_BYTES:
        raise HighSSignature("signature has a high s value (malleable form)")
    try:
        if len(digest) != 32:
            raise ValueError(f"digest is {len(digest)} bytes, expected 32")
        ok = _verify(bytes(pubkey), bytes(digest), sig)
    except (ValueError, TypeError) as exc:
        raise BadSignature(f"signature or key does not parse: {exc}") from exc
    if not ok:
        raise BadSignature("signature does not verify")
