"""Tapscript checkpoints: tr(NUMS, sortedmulti_a(k, K1..Kn)) for validator sets of any size.

One tapscript leaf (BIP342: <K1> CHECKSIG <K2> CHECKSIGADD ... <Kn> CHECKSIGADD <k>
NUMEQUAL, keys sorted by their x-only bytes) under BIP341's provably unspendable
internal key H, so the coin can only move by k Schnorr signatures of the epoch's keys.
embit's Descriptor compiles the output; this module adds what a checkpoint needs
around it: the leaf hash and control block, the BIP341 script-path sighash, the
witness with k signatures in key order and empty slots, and its exact size.

Limits (worked out in docs/protocol.md, "Multisig scripts"): consensus caps the
stack at 1000 items, and the leaf's witness puts n signature slots on it before the
script pushes one key more, so n <= 999; Bitcoin Core's and Litecoin Core's
standardness accept tapscript stack items up to 80 bytes (a signature is 65) and a
transaction weight up to 400,000, which n = 999 stays far below (about 60,000 WU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from embit import hashes
from embit.descriptor.arguments import Number
from embit.ec import PublicKey, SchnorrSig
from embit.script import Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionOutput
from embit.util import secp256k1

from bftanchor.descriptor import EpochMultisig
from bftanchor.errors import DescriptorError, TemplateError

# BIP341's NUMS point: lift_x(SHA256(G)); nobody knows its discrete logarithm.
NUMS_XONLY = bytes.fromhex("50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0")
NUMS_KEY = PublicKey.from_xonly(NUMS_XONLY)
LEAF_VERSION = 0xC0  # BIP342 tapscript
# Consensus: at most 1000 stack items; the n witness slots plus the key being pushed.
MAX_TAPSCRIPT_KEYS = 999
# Standardness (policy.cpp): each tapscript witness stack item at most 80 bytes.
MAX_STANDARD_TAPSCRIPT_STACK_ITEM_SIZE = 80
MAX_STANDARD_TX_WEIGHT = 400_000
SIG_LEN = 65  # 64-byte BIP340 signature and the explicit SIGHASH_ALL byte
CONTROL_BLOCK_LEN = 33  # leaf version | parity, internal key; no branch (one leaf)


def xonly(pub: PublicKey) -> bytes:
    return pub.xonly()


@dataclass(frozen=True)
class TapscriptMultisig(EpochMultisig):
    """The coin's script in a tapscript epoch; EpochMultisig(record) returns one."""

    def __post_init__(self) -> None:
        rec = self.record
        if not rec.is_taproot:
            raise DescriptorError(f"epoch {rec.epoch} is not a tapscript epoch")
        if rec.n > MAX_TAPSCRIPT_KEYS:
            raise DescriptorError(
                f"epoch {rec.epoch} has {rec.n} keys; a sortedmulti_a leaf allows at most "
                f"{MAX_TAPSCRIPT_KEYS} (consensus stack limit of 1000 items)"
            )
        if not 1 <= rec.threshold <= rec.n:
            raise DescriptorError(f"epoch {rec.epoch}: threshold out of range")

    @property
    def is_taproot(self) -> bool:
        return True

    @staticmethod
    def _key_order(pub: PublicKey) -> bytes:
        # sortedmulti_a sorts by the x-only key the script pushes (BIP390).
        return pub.xonly()

    def descriptor(self) -> str:
        parts = ",".join(v.pow_key + "/0/0" for v in self.record.validators)
        return f"tr({NUMS_XONLY.hex()},sortedmulti_a({self.threshold},{parts}))"

    @cached_property
    def tapscript(self) -> Script:
        """<K1> CHECKSIG <K2> CHECKSIGADD ... <Kn> CHECKSIGADD <k> NUMEQUAL, keys x-only.

        Built from the keys derived once here rather than by parsing the descriptor with
        embit (80 ms for n = 100 on every use); tests/test_tapscript.py checks that
        embit's Descriptor compiles the same leaf and output for many n.
        """
        data = b"".join(
            b"\x20" + x + (b"\xac" if i == 0 else b"\xba") for i, x in enumerate(self.xonly_keys)
        )
        return Script(data + Number(self.threshold).compile() + b"\x9c")

    @property
    def witness_script(self) -> None:  # type: ignore[override]
        """A taproot coin has no witness script; a PSBT that names one is not ours."""
        return None

    @cached_property
    def leaf_hash(self) -> bytes:
        return hashes.tagged_hash("TapLeaf", bytes([LEAF_VERSION]) + self.tapscript.serialize())

    @cached_property
    def _tweaked(self) -> bytes:
        """Q = H + int(TapTweak(H || leaf))G in compressed form: its first byte is the
        parity the control block must carry (embit's taproot_tweak drops it)."""
        tweak = hashes.tagged_hash("TapTweak", NUMS_XONLY + self.leaf_hash)
        point = secp256k1.ec_pubkey_add(secp256k1.ec_pubkey_parse(b"\x02" + NUMS_XONLY), tweak)
        return secp256k1.ec_pubkey_serialize(point)

    @property
    def output_key(self) -> PublicKey:
        return PublicKey.from_xonly(self._tweaked[1:33])

    @cached_property
    def control_block(self) -> bytes:
        parity = self._tweaked[0] & 1
        return bytes([LEAF_VERSION | parity]) + NUMS_XONLY

    @cached_property
    def script_pubkey(self) -> Script:
        return Script(b"\x51\x20" + self.output_key.xonly())  # OP_1 <Q>

    @cached_property
    def xonly_keys(self) -> tuple[bytes, ...]:
        """The keys' x-only bytes in script order (serializing a key costs a ctypes call)."""
        return tuple(k.pubkey.xonly() for k in self.keys)

    @cached_property
    def _index(self) -> dict[bytes, int]:
        return {x: i for i, x in enumerate(self.xonly_keys)}

    def key_index(self, pub: PublicKey | bytes) -> int | None:
        return self._index.get(pub if isinstance(pub, bytes) else pub.xonly())

    def leaf_signatures(self, taproot_sigs: dict) -> dict[int, bytes]:
        """PSBT_IN_TAP_SCRIPT_SIG entries for this leaf, by key index."""
        out = {}
        for (key, leaf), sig in taproot_sigs.items():
            i = self.key_index(key)
            if leaf == self.leaf_hash and i is not None:
                out[i] = sig
        return out

    def tap_derivations(self) -> dict:
        """PSBT_{IN,OUT}_TAP_BIP32_DERIVATION: x-only key -> ([leaf hash], origin)."""
        return {
            PublicKey.from_xonly(x): ([self.leaf_hash], k.derivation)
            for x, k in zip(self.xonly_keys, self.keys, strict=True)
        }

    def witness_len(self) -> int:
        """Serialized witness of the coin input: k signatures, n - k empty slots."""
        n, k, script = self.record.n, self.threshold, len(self.tapscript.data)
        return (
            _varint_len(n + 2)
            + k * (1 + SIG_LEN)
            + (n - k)
            + _varint_len(script)
            + script
            + 1
            + CONTROL_BLOCK_LEN
        )

    def witness(self, sigs: dict[int, bytes]) -> Witness:
        """Witness for signatures by key index: the stack consumes K1's slot first, so the
        slots are serialized last key first."""
        slots = [sigs.get(i, b"") for i in range(len(self.keys))]
        return Witness(list(reversed(slots)) + [self.tapscript.data, self.control_block])


def _varint_len(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5


def sighash(
    tx: Transaction, index: int, ms: TapscriptMultisig, spent: list[TransactionOutput]
) -> bytes:
    """BIP341 script-path sighash (SIGHASH_ALL) of input `index` for the leaf.

    `spent` is every input's previous output: BIP341 commits to all amounts and scripts.
    """
    if len(spent) != len(tx.vin):
        raise TemplateError("a taproot sighash needs every input's previous output")
    # embit caches the per-transaction hashes on the object: hash a private copy.
    fresh = Transaction.parse(tx.serialize())
    return fresh.sighash_taproot(
        index,
        script_pubkeys=[u.script_pubkey for u in spent],
        values=[u.value for u in spent],
        sighash=SIGHASH.ALL,
        ext_flag=1,
        script=ms.tapscript,
        leaf_version=LEAF_VERSION,
    )


def check_signature(ms: TapscriptMultisig, pub: PublicKey, sig: bytes, msg: bytes) -> None:
    """Raise TemplateError unless sig is pub's BIP340 SIGHASH_ALL signature of msg."""
    i = ms.key_index(pub)
    if i is None:
        raise TemplateError(f"signature by {pub.xonly().hex()} who is not in the multisig")
    if len(sig) != SIG_LEN or sig[-1] != SIGHASH.ALL:
        raise TemplateError(
            f"signature is not a 65-byte BIP340 signature with SIGHASH_ALL ({len(sig)} bytes)"
        )
    try:
        ok = PublicKey.from_xonly(ms.xonly_keys[i]).schnorr_verify(SchnorrSig(sig[:64]), msg)
    except Exception as exc:
        raise TemplateError(f"signature does not parse: {exc}") from exc
    if not ok:
        raise TemplateError(f"signature by {ms.xonly_keys[i].hex()} does not verify")


def witness_signers(
    tx: Transaction, ms: TapscriptMultisig, spent: list[TransactionOutput]
) -> list[PublicKey]:
    """Keys whose valid signatures the coin input's witness carries (lineage catch-up).

    The witness must reveal exactly this leaf with its control block; every non-empty
    slot must hold a valid signature (as consensus requires of CHECKSIGADD).
    """
    items = tx.vin[0].witness.items if tx.vin[0].witness else []
    n = len(ms.keys)
    if len(items) != n + 2 or items[-1] != ms.control_block or items[-2] != ms.tapscript.data:
        return []
    msg = sighash(tx, 0, ms, spent)
    found = []
    for i, sig in enumerate(reversed(items[:n])):
        if not sig:
            continue
        if len(sig) != SIG_LEN or sig[-1] != SIGHASH.ALL:
            return []
        key = PublicKey.from_xonly(ms.xonly_keys[i])
        if not key.schnorr_verify(SchnorrSig(sig[:64]), msg):
            return []
        found.append(ms.keys[i].pubkey)
    return found


def estimate_vsize(base_size: int, ms: TapscriptMultisig, other_witness: int) -> int:
    """Exact vsize: Schnorr signatures have one length, so the witness is known in advance.

    base_size: the transaction without witnesses; other_witness: bytes of the other
    inputs' witnesses, marker and flag included.
    """
    return math.ceil((base_size * 4 + ms.witness_len() + other_witness) / 4)


def taproot_input_problems(inp, ms: TapscriptMultisig) -> list[str]:
    """What is wrong with a PSBT input that claims to spend the epoch's tapscript coin.

    The leaf and the sighash type are what a device signs for: a PSBT naming another
    leaf, another internal key or another sighash type is not this checkpoint.
    """
    problems = []
    leaf = ms.tapscript.data + bytes([LEAF_VERSION])
    if inp.taproot_scripts and dict(inp.taproot_scripts) != {ms.control_block: leaf}:
        problems.append(f"input 0's tapscript leaf is not epoch {ms.epoch}'s sortedmulti_a")
    if inp.taproot_internal_key is not None and inp.taproot_internal_key.xonly() != NUMS_XONLY:
        problems.append("input 0's taproot internal key is not the NUMS point")
    if inp.taproot_merkle_root is not None and inp.taproot_merkle_root != ms.leaf_hash:
        problems.append("input 0's taproot merkle root is not the epoch's leaf")
    if inp.bip32_derivations or inp.partial_sigs:
        problems.append("input 0 carries segwit v0 key data on a taproot coin")
    return problems


def choose_script(n: int, wsh_max: int = 20, tr_max: int = MAX_TAPSCRIPT_KEYS) -> str:
    """The script an epoch of n validators gets when its record is made.

    wsh (DESIGN.md's default, which every profiled device signs) while n fits
    CHECKMULTISIG and every validator's device signs a wsh multisig of n keys;
    otherwise tapscript, if every device can sign that. wsh_max / tr_max are the
    largest n the weakest device of the set signs (0: it cannot sign that script).
    """
    from bftanchor.descriptor import MAX_CHECKMULTISIG_KEYS
    from bftanchor.epoch import SCRIPT_TR, SCRIPT_WSH

    if n < 1:
        raise DescriptorError(f"an epoch needs at least one validator, not {n}")
    if n <= min(wsh_max, MAX_CHECKMULTISIG_KEYS):
        return SCRIPT_WSH
    if n <= min(tr_max, MAX_TAPSCRIPT_KEYS):
        return SCRIPT_TR
    why = []
    if n > MAX_CHECKMULTISIG_KEYS:
        why.append(f"wsh(sortedmulti) allows at most {MAX_CHECKMULTISIG_KEYS} keys")
    elif n > wsh_max:
        why.append(f"a validator's device signs wsh multisigs of at most {wsh_max} keys")
    if tr_max <= 0:
        why.append("a validator's device cannot sign tapscript multisig")
    elif n > tr_max:
        why.append(f"a validator's device signs tapscript multisigs of at most {tr_max} keys")
    raise DescriptorError(f"no script can lock an epoch of {n} validators: " + "; ".join(why))
