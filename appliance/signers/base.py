"""What the appliance needs from anything that holds a validator's PoW keys."""

from __future__ import annotations

import copy
from typing import Protocol

from embit.psbt import PSBT
from embit.transaction import SIGHASH

from bftanchor.descriptor import EpochMultisig


class SignerError(Exception):
    """A signer could not or would not sign; the message says what to do."""


class Signer(Protocol):
    @property
    def fingerprint(self) -> bytes: ...

    def pow_key(self, epoch: int, script_type: int = 2) -> str:
        """This signer's key for an epoch as [fingerprint/48h/<coin>h/<epoch>h/<type>h]xpub
        (BIP48 script type 2 for wsh, 3 for a tapscript epoch)."""
        ...

    def sign(self, psbt: PSBT, multisig: EpochMultisig) -> PSBT:
        """Return a copy of psbt carrying this signer's signature on input 0 only. The
        appliance verifies that signature itself before it leaves."""
        ...


def require_sighash_all(psbt: PSBT) -> None:
    """BIP174: a signer that will not use the sighash type an input asks for must not sign.
    This appliance signs SIGHASH_ALL only; every signer checks before it signs (for a
    device: before the PSBT is sent to it)."""
    for i, inp in enumerate(psbt.inputs):
        if inp.sighash_type is not None and inp.sighash_type != SIGHASH.ALL:
            raise SignerError(
                f"input {i} asks for sighash type {inp.sighash_type:#x}, expected SIGHASH_ALL "
                f"({SIGHASH.ALL:#x}) only: not signing"
            )


def epoch_path(coin_type: int, epoch: int, script_type: int = 2) -> str:
    return f"m/48h/{coin_type}h/{epoch}h/{script_type}h"


def with_own_input0_signatures(psbt: PSBT) -> PSBT:
    """A copy of `psbt` sharing everything but input 0's signature maps, for a signer to
    add its signature to: the caller compares the result against the PSBT it passed in,
    and no serialize-and-parse round trip is needed to keep that one untouched."""
    out = copy.copy(psbt)
    out.inputs = list(psbt.inputs)
    out.inputs[0] = copy.copy(psbt.inputs[0])
    out.inputs[0].partial_sigs = dict(psbt.inputs[0].partial_sigs)
    out.inputs[0].taproot_sigs = dict(psbt.inputs[0].taproot_sigs)
    return out
