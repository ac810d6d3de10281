"""secp256k1 ECDSA in the BFT chain's wire form: 64-byte compact r||s, low-s.

Uses embit's libsecp256k1 binding, so verification costs what libsecp costs.
"""

from __future__ import annotations

from embit.util import secp256k1

from .errors import BadSignature, HighSSignature

# Half the group order: s above it is the malleable twin of a valid signature.
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _N // 2


def sign_compact(secret: bytes, digest: bytes) -> bytes:
    """Deterministic (RFC 6979) low-s signature of a 32-byte digest."""
    if len(secret) != 32 or len(digest) != 32:
        raise ValueError("secret and digest must be 32 bytes each")
    sig = secp256k1.ecdsa_sign(digest, secret)
    return secp256k1.ecdsa_signature_serialize_compact(sig)


def pubkey_from_secret(secret: bytes) -> bytes:
    """Compressed (33-byte) public key of a secret."""
    return secp256k1.ec_pubkey_serialize(secp256k1.ec_pubkey_create(secret))


def verify_compact(pubkey: bytes, digest: bytes, sig64: bytes) -> None:
    """Raise HighSSignature or BadSignature unless sig64 is a valid low-s signature."""
    if len(sig64) != 64:
        raise BadSignature(f"signature is {len(sig64)} bytes, expected 64")
    r = int.from_bytes(sig64[:32], "big")
    s = int.from_bytes(sig64[32:], "big")
    if not (0 < r < _N) or not (0 < s < _N):
        raise BadSignature("signature r or s out of range")
    if s > _HALF_N:
        raise HighSSignature("signature has a high s value (malleable form)")
    try:
        parsed = secp256k1.ecdsa_signature_parse_compact(sig64)
        point = secp256k1.ec_pubkey_parse(pubkey)
        ok = secp256k1.ecdsa_verify(parsed, digest, point)
    except (ValueError, TypeError) as exc:
        raise BadSignature(f"signature or key does not parse: {exc}") from exc
    if not ok:
        raise BadSignature("signature does not verify")
