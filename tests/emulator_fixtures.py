"""Shared helpers for the Jade emulator tests: emulators, HWI clients, PSBTs.

PSBTs are built with embit only, the way an initiator would build a checkpoint
spend: input 0 is a wsh(sortedmulti) coin, output 0 an OP_RETURN payload and
output 1 the coin again; every key carries its [fingerprint/path] origin.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from embit import bip32, bip39
from embit.descriptor import Descriptor
from embit.ec import PublicKey, Signature
from embit.networks import NETWORKS
from embit.psbt import PSBT, DerivationPath
from embit.script import Script
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput
from hwilib.common import Chain
from hwilib.devices.jade import JadeClient

from appliance.emulator import JadeEmulator

DEVICE_MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
H = 0x80000000
ACCOUNT = [48 | H, 1 | H, 0 | H, 2 | H]  # BIP48 testnet account 0, script type 2 (wsh)
TPUB = NETWORKS["test"]["xpub"]


def mnemonic_for(index: int) -> str:
    """A distinct valid 12-word mnemonic per index (deterministic entropy)."""
    return bip39.mnemonic_from_bytes(hashlib.sha256(f"cosigner-{index}".encode()).digest()[:16])


def root_of(mnemonic: str) -> bip32.HDKey:
    return bip32.HDKey.from_seed(bip39.mnemonic_to_seed(mnemonic))


@dataclass(frozen=True)
class Cosigner:
    root: bip32.HDKey

    @property
    def fingerprint(self) -> bytes:
        return self.root.my_fingerprint

    @property
    def account_xpub(self) -> str:
        return self.root.derive(ACCOUNT).to_public(version=TPUB).to_base58()

    def key_origin(self) -> str:
        path = "/".join(f"{i & ~H}h" for i in ACCOUNT)
        return f"[{self.fingerprint.hex()}/{path}]{self.account_xpub}"

    def pubkey(self, suffix: Sequence[int]) -> bytes:
        return self.root.derive(ACCOUNT + list(suffix)).sec()


def cosigners(count: int, include_device: bool = True) -> list[Cosigner]:
    """The device's signer first (if included), then distinct co-signers."""
    roots = [root_of(DEVICE_MNEMONIC)] if include_device else []
    roots += [root_of(mnemonic_for(i)) for i in range(count - len(roots))]
    return [Cosigner(r) for r in roots]


def descriptor(signers: Sequence[Cosigner], k: int, branch: int = 0, index: int = 0) -> str:
    """wsh(sortedmulti(k, [fp/48h/1h/0h/2h]tpub/branch/index, ...)) -- HWI accepts it."""
    keys = ",".join(f"{s.key_origin()}/{branch}/{index}" for s in signers)
    return f"wsh(sortedmulti({k},{keys}))"


@dataclass(frozen=True)
class MultisigCoin:
    signers: tuple[Cosigner, ...]
    k: int
    suffix: tuple[int, int]

    @property
    def desc(self) -> Descriptor:
        keys = ",".join(s.pubkey(self.suffix).hex() for s in self.signers)
        return Descriptor.from_string(f"wsh(sortedmulti({self.k},{keys}))")

    def add_input_metadata(self, psbt: PSBT, i: int, amount: int, utxo: bool = True) -> None:
        inp = psbt.inputs[i]
        if utxo:
            inp.witness_utxo = TransactionOutput(amount, self.desc.script_pubkey())
        inp.witness_script = self.desc.witness_script()
        for s in self.signers:
            inp.bip32_derivations[PublicKey.parse(s.pubkey(self.suffix))] = DerivationPath(
                s.fingerprint, ACCOUNT + list(self.suffix))

    def add_output_metadata(self, psbt: PSBT, o: int) -> None:
        out = psbt.outputs[o]
        out.witness_script = self.desc.witness_script()
        for s in self.signers:
            out.bip32_derivations[PublicKey.parse(s.pubkey(self.suffix))] = DerivationPath(
                s.fingerprint, ACCOUNT + list(self.suffix))


def op_return(payload: bytes = b"BFTA\x01" + bytes(48)) -> Script:
    return Script(bytes([0x6A, len(payload)]) + payload)


def checkpoint_psbt(coin: MultisigCoin, amount: int = 100_000, fee: int = 1_000,
                    new_coin: MultisigCoin | None = None, utxo: bool = True,
                    extra_out: TransactionOutput | None = None) -> PSBT:
    """Input 0 the coin; output 0 OP_RETURN (value 0); output 1 the coin again."""
    new_coin = new_coin or coin
    vout = [TransactionOutput(0, op_return()),
            TransactionOutput(amount - fee, new_coin.desc.script_pubkey())]
    if extra_out is not None:
        vout.append(extra_out)
    prev = hashlib.sha256(b"funding tx").digest()
    tx = Transaction(version=2, locktime=0,
                     vin=[TransactionInput(prev, 1, sequence=0xFFFFFFFD)], vout=vout)
    psbt = PSBT(tx)
    coin.add_input_metadata(psbt, 0, amount, utxo=utxo)
    new_coin.add_output_metadata(psbt, 1)
    return psbt


def partial_sig_verifies(signed: PSBT, index: int, pubkey: bytes, low_r: bool = True) -> bool:
    """The partial signature for `pubkey` is SIGHASH_ALL, low-R (unless told
    otherwise), and verifies against the input's sighash."""
    sigs = {pk.sec(): sig for pk, sig in signed.inputs[index].partial_sigs.items()}
    sig = sigs.get(pubkey)
    if sig is None or sig[-1] != SIGHASH.ALL:
        return False
    der = sig[:-1]
    r_is_low = der[3] == 32 and der[4] < 0x80  # r is 32 bytes with the top bit clear
    digest = signed.sighash(index, SIGHASH.ALL)
    return (r_is_low or not low_r) and PublicKey.parse(pubkey).verify(Signature.parse(der), digest)


@pytest.fixture
def start_emulator() -> Iterator[Callable[..., JadeEmulator]]:
    """A factory start_emulator(**JadeEmulator kwargs) -> started emulator on a free
    port, every one stopped at teardown. A test module gets it with
    `pytest_plugins = ["emulator_fixtures"]`."""
    started: list[JadeEmulator] = []

    def _start(**kwargs: Any) -> JadeEmulator:
        kwargs.setdefault("mnemonic", DEVICE_MNEMONIC)
        kwargs.setdefault("port", 0)
        emu = JadeEmulator(**kwargs)
        emu.start()
        started.append(emu)
        return emu

    yield _start
    for emu in started:
        emu.stop()


@contextmanager
def hwi_client(emu: JadeEmulator, chain: Chain = Chain.TEST, timeout: int = 20
               ) -> Iterator[JadeClient]:
    """HWI's own JadeClient on the emulator's tcp: path."""
    client = JadeClient(emu.path, chain=chain, timeout=timeout)
    try:
        yield client
    finally:
        client.close()
