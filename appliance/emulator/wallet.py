"""The emulated device's key material: BIP39/BIP32 derivation and ECDSA signing.

All cryptography is embit's (bip39, bip32, libsecp256k1 bindings). Private keys
never leave this object: only xpubs, public keys, addresses and signatures do,
and the repr hides the secrets so they cannot leak into logs either.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from functools import lru_cache

from embit import bip32, bip39, compact, ec, script
from embit.script import Script
from embit.util import secp256k1

from appliance.emulator.networks import xpub_version

# The single-sig script variants Jade knows: variant -> (the output script for a public
# key, the BIP44 purpose its paths use).
SINGLESIG_VARIANTS: dict[str, tuple[Callable[[ec.PublicKey], Script], int]] = {
    "pkh(k)": (script.p2pkh, 44),
    "wpkh(k)": (script.p2wpkh, 84),
    "sh(wpkh(k))": (lambda pub: script.p2sh(script.p2wpkh(pub)), 49),
}


class Keychain:
    """A loaded wallet: root key plus how it was created (mnemonic or raw seed)."""

    def __init__(self, root: bip32.HDKey, *, mnemonic: str | None = None,
                 passphrase: str | None = None, temporary: bool = False) -> None:
        self._root = root
        self._mnemonic = mnemonic
        self._passphrase = passphrase
        # debug_set_mnemonic.c: a wallet from a raw seed is always 'temporary'.
        self.temporary = temporary
        self._derive = lru_cache(maxsize=256)(self._derive_uncached)

    def __repr__(self) -> str:
        return f"Keychain(fingerprint={self.fingerprint.hex()}, temporary={self.temporary})"

    @classmethod
    def from_mnemonic(cls, mnemonic: str, passphrase: str | None = None,
                      temporary: bool = False) -> Keychain:
        words = " ".join(mnemonic.split())
        if not bip39.mnemonic_is_valid(words):
            raise ValueError("invalid BIP39 mnemonic")
        seed = bip39.mnemonic_to_seed(words, password=passphrase or "")
        return cls(bip32.HDKey.from_seed(seed), mnemonic=words, passphrase=passphrase,
                   temporary=temporary)

    @classmethod
    def from_seed(cls, seed: bytes) -> Keychain:
        if len(seed) not in (32, 64):
            raise ValueError("seed must be 32 or 64 bytes")
        return cls(bip32.HDKey.from_seed(seed), temporary=True)

    @property
    def persistable(self) -> tuple[str, str | None] | None:
        """(mnemonic, passphrase) for the state file, or None for a temporary wallet."""
        if self.temporary or self._mnemonic is None:
            return None
        return self._mnemonic, self._passphrase

    @property
    def fingerprint(self) -> bytes:
        return self._root.my_fingerprint

    def _derive_uncached(self, path: tuple[int, ...]) -> bip32.HDKey:
        return self._root.derive(list(path))

    def public_hdkey(self, path: list[int], network: str) -> bip32.HDKey:
        return self._derive(tuple(path)).to_public(version=xpub_version(network))

    def xpub(self, path: list[int], network: str) -> str:
        return self.public_hdkey(path, network).to_base58()

    def pubkey(self, path: list[int]) -> bytes:
        return self._derive(tuple(path)).sec()

    def sign_digest(self, path: list[int], digest: bytes, grind_r: bool = True) -> bytes:
        """DER ECDSA signature (no sighash byte), RFC6979 nonces.

        With grind_r this is libwally's EC_FLAG_GRIND_R loop, which the firmware uses
        for PSBT signing (sign_psbt.c: wally_psbt_sign_input_bip32(..., EC_FLAG_GRIND_R)):
        retry with a little-endian counter as extra nonce data until the compact
        signature's first byte is < 0x80, so r needs no DER padding.
        """
        secret = self._derive(tuple(path)).secret
        counter = 0
        while True:
            extra = counter.to_bytes(4, "little") + bytes(28) if counter else None
            raw = secp256k1.ecdsa_sign(digest, secret, None, extra)
            if not grind_r or secp256k1.ecdsa_signature_serialize_compact(raw)[0] < 0x80:
                return ec.Signature(raw).serialize()
            counter += 1

    def nonce_commitment(self, path: list[int], digest: bytes) -> tuple[bytes, bytes]:
        """(33-byte nonce point R, DER signature using that nonce), RFC6979, no grinding.

        Stands in for the anti-exfil signer commitment: the firmware returns the
        S2C opening of its nonce (wally_ae_signer_commit_from_bytes). embit's
        libsecp256k1 has no anti-exfil module, so the emulator commits to the plain
        RFC6979 nonce it will use and ignores the host entropy (see README.md).
        """
        secret = self._derive(tuple(path)).secret
        rec = secp256k1.ecdsa_sign_recoverable(digest, secret)
        compact64, recid = secp256k1.ecdsa_recoverable_signature_serialize_compact(rec)
        point = bytes([0x02 | (recid & 1)]) + compact64[:32]
        plain = secp256k1.ecdsa_recoverable_signature_convert(rec)
        return point, ec.Signature(plain).serialize()

    def sign_message(self, path: list[int], message: bytes) -> str:
        """Bitcoin signed-message signature, base64 of header||r||s.

        wallet_sign_message_hash (main/wallet.c): double-SHA256 of the
        "Bitcoin Signed Message" formatting, recoverable ECDSA, header 31+recid
        (compressed key), base64 -- the format `bitcoin-cli verifymessage` takes.
        """
        digest = message_hash(message)
        secret = self._derive(tuple(path)).secret
        rec = secp256k1.ecdsa_sign_recoverable(digest, secret)
        compact64, recid = secp256k1.ecdsa_recoverable_signature_serialize_compact(rec)
        return base64.b64encode(bytes([31 + recid]) + compact64).decode()


def message_hash(message: bytes) -> bytes:
    """wally_format_bitcoin_message(..., BITCOIN_MESSAGE_FLAG_HASH)."""
    data = b"\x18Bitcoin Signed Message:\n" + compact.to_bytes(len(message)) + message
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()
