"""A signer holding a BIP39 seed in software (development, devnet, tests).

It signs only input 0, and only when the PSBT names this signer's own key at the
exact path for the request's epoch: a PSBT cannot steer it to another key.
"""

from __future__ import annotations

from pathlib import Path

from embit import bip32, bip39
from embit.ec import PublicKey
from embit.networks import NETWORKS
from embit.psbt import PSBT
from embit.transaction import SIGHASH

from appliance.signers.base import (
    SignerError,
    epoch_path,
    require_sighash_all,
    with_own_input0_signatures,
)
from bftanchor.bftsig import sign_der
from bftanchor.descriptor import KEY_TAIL, EpochMultisig
from bftanchor.secretfile import SecretFileError, read_secret
from bftanchor.template import put_signature, sighash


class SoftwareSigner:
    def __init__(self, root: bip32.HDKey, coin_type: int = 1) -> None:
        if not root.is_private:
            raise SignerError("a software signer needs a private root key")
        self._root = root
        self.coin_type = coin_type
        self._accounts: dict[tuple[int, int], bip32.HDKey] = {}
        self._children: dict[tuple[int, int], bip32.HDKey] = {}
        self._pubs: dict[tuple[int, int], PublicKey] = {}

    @classmethod
    def from_seed(cls, seed: bytes, coin_type: int = 1) -> SoftwareSigner:
        return cls(bip32.HDKey.from_seed(seed), coin_type)

    @classmethod
    def from_mnemonic(
        cls, mnemonic: str, passphrase: str = "", coin_type: int = 1
    ) -> SoftwareSigner:
        words = " ".join(mnemonic.split())
        if not bip39.mnemonic_is_valid(words):
            raise SignerError("the seed file's mnemonic is not a valid BIP39 mnemonic")
        return cls.from_seed(bip39.mnemonic_to_seed(words, passphrase), coin_type)

    @classmethod
    def from_file(cls, path: Path, passphrase: str = "", coin_type: int = 1) -> SoftwareSigner:
        """A seed file holds a BIP39 mnemonic, or `hex:` and a raw BIP32 seed. A seed
        file others may read is refused: the key must be taken as known to them."""
        try:
            text = read_secret(Path(path), "seed file").strip()
        except SecretFileError as exc:
            raise SignerError(str(exc)) from exc
        except OSError as exc:
            raise SignerError(f"cannot read seed file {path}: {exc}") from exc
        if text.startswith("hex:"):
            try:
                return cls.from_seed(bytes.fromhex(text[4:].strip()), coin_type)
            except ValueError as exc:
                raise SignerError(f"seed file {path}: bad hex seed") from exc
        return cls.from_mnemonic(text, passphrase, coin_type)

    @property
    def fingerprint(self) -> bytes:
        return self._root.my_fingerprint

    def account(self, epoch: int, script_type: int = 2) -> bip32.HDKey:
        """The epoch's BIP48 account key (derived once: hardened steps cost EC math)."""
        key = self._accounts.get((epoch, script_type))
        if key is None:
            key = self._root.derive(epoch_path(self.coin_type, epoch, script_type))
            self._accounts[(epoch, script_type)] = key
        return key

    def _child(self, epoch: int, script_type: int = 2) -> bip32.HDKey:
        """The epoch's multisig key, m/48'/coin'/epoch'/<type>'/0/0."""
        key = self._children.get((epoch, script_type))
        if key is None:
            key = self.account(epoch, script_type).derive(list(KEY_TAIL))
            self._children[(epoch, script_type)] = key
        return key

    def _pubkey(self, epoch: int, script_type: int) -> PublicKey:
        """The epoch's multisig public key (computed once: it costs a point multiply)."""
        pub = self._pubs.get((epoch, script_type))
        if pub is None:
            pub = self._child(epoch, script_type).key.get_public_key()
            self._pubs[(epoch, script_type)] = pub
        return pub

    def pow_key(self, epoch: int, script_type: int = 2) -> str:
        xpub = (
            self.account(epoch, script_type)
            .to_public()
            .to_base58(
                version=NETWORKS["test"]["xpub"]
                if self.coin_type == 1
                else NETWORKS["main"]["xpub"]
            )
        )
        path = epoch_path(self.coin_type, epoch, script_type)[2:]
        return f"[{self.fingerprint.hex()}/{path}]{xpub}"

    def sign(self, psbt: PSBT, multisig: EpochMultisig) -> PSBT:
        require_sighash_all(psbt)
        st = multisig.record.script_type
        path = epoch_path(self.coin_type, multisig.epoch, st)
        child = self._child(multisig.epoch, st)
        pub = self._pubkey(multisig.epoch, st)
        expected_path = list(bip32.parse_path(path)) + list(KEY_TAIL)
        if multisig.is_taproot:
            # BIP371: the key is named x-only, with the leaf it signs in.
            tap = psbt.inputs[0].taproot_bip32_derivations.get(PublicKey.from_xonly(pub.xonly()))
            der = tap[1] if tap and multisig.leaf_hash in tap[0] else None
        else:
            der = psbt.inputs[0].bip32_derivations.get(pub)
        if (
            der is None
            or der.fingerprint != self.fingerprint
            or list(der.derivation) != expected_path
        ):
            raise SignerError(
                f"the PSBT does not name this signer's epoch-{multisig.epoch} key "
                f"({self.fingerprint.hex()} at {path}/0/0)"
            )
        member = (
            multisig.key_index(pub) is not None
            if multisig.is_taproot
            else pub in {k.pubkey for k in multisig.keys}
        )
        if not member:
            raise SignerError("this signer's key is not in the epoch's multisig")
        out = with_own_input0_signatures(psbt)
        msg = sighash(out, 0, multisig)
        if multisig.is_taproot:
            sig = child.key.schnorr_sign(msg).serialize() + bytes([SIGHASH.ALL])
        else:
            sig = sign_der(child.key.secret, msg) + bytes([SIGHASH.ALL])
        put_signature(out, 0, multisig, pub, sig)
        return out
