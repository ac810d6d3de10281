"""The checkpoint transaction: build its PSBT, size it, verify and finalize signatures.

Shape (DESIGN.md): nVersion 2, nLockTime 0; input 0 the coin with nSequence 1, top-up
inputs with nSequence 0xfffffffd; output 0 the payload (value 0); output 1 the coin again;
optional output 2 top-up change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from embit.ec import PublicKey
from embit.psbt import PSBT
from embit.script import Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from bftanchor import tapscript
from bftanchor.bftsig import verify_der
from bftanchor.descriptor import EpochMultisig
from bftanchor.errors import TemplateError
from bftanchor.payload import Payload

TX_VERSION = 2
LOCKTIME = 0
# The coin input's nSequence: a BIP68 relative lock of one block (bit 31 clear: the lock
# is on; bit 22 clear: counted in blocks; low 16 bits: 1). A checkpoint can then never be
# mined in the same block as its parent, on any branch, so "at most one per PoW block" is
# a consensus rule rather than the schedule's promise. Being below 0xfffffffe it also
# signals BIP125 replaceability, which the fee ladder needs. Needs nVersion >= 2.
COIN_SEQUENCE = 0x00000001
# Top-up inputs (the fee wallet's own coins): replaceable, no relative lock.
TOPUP_SEQUENCE = 0xFFFFFFFD


def input_sequence(index: int) -> int:
    """The nSequence a checkpoint's input `index` must carry."""
    return COIN_SEQUENCE if index == 0 else TOPUP_SEQUENCE


# A DER signature is at most 72 bytes plus the sighash byte; sizing for the worst
# case means a fee rate we computed is never undershot by the final transaction.
MAX_SIG_LEN = 73


@dataclass(frozen=True)
class Outpoint:
    txid: str  # display (big-endian) hex, as RPC and explorers show it
    vout: int

    def __str__(self) -> str:
        return f"{self.txid}:{self.vout}"

    @classmethod
    def parse(cls, text: str) -> Outpoint:
        try:
            txid, vout = text.rsplit(":", 1)
            if len(bytes.fromhex(txid)) != 32:
                raise ValueError
            return cls(txid.lower(), int(vout))
        except ValueError:
            raise ValueError(f"not an outpoint (TXID:VOUT): {text!r}") from None


@dataclass(frozen=True)
class Coin:
    """The checkpoint coin: where it is, what it holds, and which epoch locks it."""

    outpoint: Outpoint
    value: int
    epoch: int


P2WPKH_WITNESS = 108  # the witness of a fee-wallet top-up input, worst case
DUST = 546  # below this, top-up change is left to the fee rather than made an output


@dataclass(frozen=True)
class TopUp:
    """Fee-wallet coins added to pay the fee when the checkpoint coin runs low.

    The coin's output grows by `amount`; whatever else the inputs bring, less the fee,
    returns to the fee wallet as `change_script` (output 2). The appliance never
    signs these inputs; the fee wallet does.
    """

    inputs: tuple[tuple[Outpoint, TransactionOutput], ...]
    amount: int
    change_script: Script
    # The full previous transaction of each input (BIP174 non_witness_utxo): the
    # appliance proves every top-up amount from it (a segwit v0 signature commits only
    # to the amount of the input it signs, the coin's, not to the top-ups').
    prev_txs: tuple[Transaction, ...] = ()

    @property
    def value(self) -> int:
        return sum(u.value for _, u in self.inputs)


def build_checkpoint_tx(
    coin: Coin, payload: Payload, dest: EpochMultisig, fee: int, topup: TopUp | None = None
) -> Transaction:
    if topup is not None:
        return _build_topped_up(coin, payload, dest, fee, topup)
    if fee < 0 or fee >= coin.value:
        raise TemplateError(f"fee {fee} is not below the coin's value {coin.value}")
    vin = [
        TransactionInput(
            bytes.fromhex(coin.outpoint.txid), coin.outpoint.vout, sequence=COIN_SEQUENCE
        )
    ]
    vout = [
        TransactionOutput(0, Script(payload.script())),
        TransactionOutput(coin.value - fee, dest.script_pubkey),
    ]
    return Transaction(version=TX_VERSION, vin=vin, vout=vout, locktime=LOCKTIME)


def _build_topped_up(
    coin: Coin, payload: Payload, dest: EpochMultisig, fee: int, topup: TopUp
) -> Transaction:
    change = topup.value - topup.amount - fee
    if topup.amount < 0 or change < 0:
        raise TemplateError(
            f"top-up of {topup.value} sat cannot add {topup.amount} to the coin and pay {fee}"
        )
    vin = [TransactionInput(bytes.fromhex(coin.outpoint.txid), coin.outpoint.vout,
                            sequence=COIN_SEQUENCE)]
    vin += [TransactionInput(bytes.fromhex(op.txid), op.vout, sequence=TOPUP_SEQUENCE)
            for op, _ in topup.inputs]
    vout = [
        TransactionOutput(0, Script(payload.script())),
        TransactionOutput(coin.value + topup.amount, dest.script_pubkey),
    ]
    if change > DUST:
        vout.append(TransactionOutput(change, topup.change_script))
    return Transaction(version=TX_VERSION, vin=vin, vout=vout, locktime=LOCKTIME)


def build_checkpoint_psbt(
    coin: Coin,
    source: EpochMultisig,
    payload: Payload,
    dest: EpochMultisig,
    fee: int,
    prev_tx: Transaction | None = None,
    topup: TopUp | None = None,
) -> PSBT:
    """PSBT with every key's derivation and the witness scripts, so devices find their key
    and recognise output 1 as the (registered) multisig."""
    if source.epoch != coin.epoch:
        raise TemplateError(f"coin belongs to epoch {coin.epoch}, not {source.epoch}")
    psbt = PSBT(build_checkpoint_tx(coin, payload, dest, fee, topup))
    prevs = {t.txid().hex(): t for t in (topup.prev_txs if topup else ())}
    for i, (op, utxo) in enumerate(topup.inputs if topup else (), start=1):
        psbt.inputs[i].witness_utxo = utxo
        if op.txid in prevs:
            psbt.inputs[i].non_witness_utxo = prevs[op.txid]
    inp = psbt.inputs[0]
    inp.witness_utxo = TransactionOutput(coin.value, source.script_pubkey)
    if prev_tx is not None:
        if prev_tx.txid().hex() != coin.outpoint.txid:
            raise TemplateError("prev_tx is not the transaction that holds the coin")
        inp.non_witness_utxo = prev_tx
    if isinstance(source, tapscript.TapscriptMultisig):
        # BIP371: the leaf with its control block, every key's origin with the leaf hash,
        # and SIGHASH_ALL named so that every signer commits the same way.
        inp.taproot_scripts[source.control_block] = source.tapscript.data + bytes(
            [tapscript.LEAF_VERSION]
        )
        inp.taproot_internal_key = tapscript.NUMS_KEY
        inp.taproot_merkle_root = source.leaf_hash
        inp.taproot_bip32_derivations = source.tap_derivations()
        inp.sighash_type = SIGHASH.ALL
    else:
        inp.witness_script = source.witness_script
        inp.bip32_derivations = source.bip32_derivations()
    out = psbt.outputs[1]
    if isinstance(dest, tapscript.TapscriptMultisig):
        out.taproot_internal_key = tapscript.NUMS_KEY
        out.taproot_bip32_derivations = dest.tap_derivations()
    else:
        out.witness_script = dest.witness_script
        out.bip32_derivations = dest.bip32_derivations()
    return psbt


def estimate_vsize(
    tx: Transaction, multisig: EpochMultisig, extra_input_witness: int = 0,
    base: int | None = None,
) -> int:
    """Virtual size of tx once input 0 carries k worst-case signatures.

    extra_input_witness: witness bytes of any top-up inputs (e.g. 108 per P2WPKH).
    base: the size of tx without scriptSigs or witnesses, if the caller has it.
    """
    if base is None:
        stripped = Transaction(
            tx.version,
            [TransactionInput(i.txid, i.vout, sequence=i.sequence) for i in tx.vin],
            tx.vout,
            tx.locktime,
        )
        base = len(stripped.serialize())
    if isinstance(multisig, tapscript.TapscriptMultisig):
        other = 2 + extra_input_witness + (len(tx.vin) - 1)
        return tapscript.estimate_vsize(base, multisig, other)
    ws = len(multisig.witness_script.data)
    items = 2 + multisig.threshold
    witness = _varint_len(items) + 1 + multisig.threshold * (1 + MAX_SIG_LEN)
    witness += _varint_len(ws) + ws
    witness += 2 + extra_input_witness + (len(tx.vin) - 1)  # marker+flag, empty stacks
    return math.ceil((base * 4 + witness) / 4)


def _varint_len(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5


def fee_for(rate_sat_vb: float, tx: Transaction, multisig: EpochMultisig) -> int:
    return math.ceil(rate_sat_vb * estimate_vsize(tx, multisig))


def sighash(psbt: PSBT, index: int, multisig: EpochMultisig) -> bytes:
    utxo = psbt.inputs[index].witness_utxo
    if utxo is None:
        raise TemplateError(f"input {index} has no witness_utxo")
    if isinstance(multisig, tapscript.TapscriptMultisig):
        spent = [i.witness_utxo for i in psbt.inputs]
        if any(u is None for u in spent):
            raise TemplateError("a taproot sighash needs every input's witness_utxo")
        return tapscript.sighash(psbt.tx, index, multisig, spent)  # type: ignore[arg-type]
    return psbt.tx.sighash_segwit(index, multisig.witness_script, utxo.value, SIGHASH.ALL)


def get_signature(psbt: PSBT, index: int, multisig: EpochMultisig, pub: PublicKey) -> bytes | None:
    """pub's signature on input `index`: partial_sigs for wsh, tap_script_sig for the leaf."""
    inp = psbt.inputs[index]
    if isinstance(multisig, tapscript.TapscriptMultisig):
        i = multisig.key_index(pub)
        return None if i is None else multisig.leaf_signatures(inp.taproot_sigs).get(i)
    return inp.partial_sigs.get(pub)


def put_signature(
    psbt: PSBT, index: int, multisig: EpochMultisig, pub: PublicKey, sig: bytes
) -> None:
    inp = psbt.inputs[index]
    if isinstance(multisig, tapscript.TapscriptMultisig):
        inp.taproot_sigs[(PublicKey.from_xonly(pub.xonly()), multisig.leaf_hash)] = sig
    else:
        inp.partial_sigs[pub] = sig


def signature_reply(
    psbt: PSBT, index: int, multisig: EpochMultisig, sigs: dict[PublicKey, bytes]
) -> PSBT:
    """What a signer hands back: the unsigned transaction, every input's witness_utxo (the
    amounts and scripts a signature commits to, so whoever holds it can verify it), and
    its signatures on input `index`. The rest (key origins, scripts, top-ups' previous
    transactions) is the initiator's own PSBT already: a BIP174 combiner merges the two,
    and at n = 100 the full copy is most of what an initiator parses per validator."""
    out = PSBT(psbt.tx)
    for mine, theirs in zip(out.inputs, psbt.inputs, strict=True):
        mine.witness_utxo = theirs.witness_utxo
    for pub, sig in sigs.items():
        put_signature(out, index, multisig, pub, sig)
    return out


def signatures(psbt: PSBT, index: int, multisig: EpochMultisig) -> dict[PublicKey, bytes]:
    """Every signature on input `index` by a key of the multisig, keyed by its key."""
    if isinstance(multisig, tapscript.TapscriptMultisig):
        found = multisig.leaf_signatures(psbt.inputs[index].taproot_sigs)
        return {multisig.keys[i].pubkey: sig for i, sig in found.items()}
    out = {}
    for k in multisig.keys:
        sig = get_signature(psbt, index, multisig, k.pubkey)
        if sig is not None:
            out[k.pubkey] = sig
    return out


def foreign_signatures(psbt: PSBT, index: int) -> int:
    """How many signatures of any kind input `index` carries (a signer must add none
    to inputs it was not asked to sign)."""
    inp = psbt.inputs[index]
    return len(inp.partial_sigs) + len(inp.taproot_sigs)


def verify_partial_sig(
    psbt: PSBT, index: int, multisig: EpochMultisig, pubkey: PublicKey, sig: bytes
) -> None:
    """Raise TemplateError unless sig is pubkey's SIGHASH_ALL signature of input `index`."""
    if isinstance(multisig, tapscript.TapscriptMultisig):
        tapscript.check_signature(multisig, pubkey, sig, sighash(psbt, index, multisig))
        return
    sec = pubkey.sec()
    if sec not in multisig.member_keys:
        raise TemplateError(f"signature by {sec.hex()} who is not in the multisig")
    if not sig or sig[-1] != SIGHASH.ALL:
        raise TemplateError("signature is not SIGHASH_ALL")
    digest = sighash(psbt, index, multisig)  # its own TemplateError, not a DER problem
    try:
        ok = verify_der(sec, digest, sig[:-1])
    except ValueError as exc:
        raise TemplateError(f"signature does not parse as DER: {exc}") from exc
    if not ok:
        raise TemplateError(f"signature by {sec.hex()} does not verify")


def partial_checkpoint(
    psbt: PSBT, multisig: EpochMultisig, sigs: dict[PublicKey, bytes]
) -> Transaction:
    """The transaction with a coin-input witness carrying only `sigs` (fewer than k): not
    spendable, but it shows who signed it, e.g. as evidence that a payload was released
    (docs/protocol.md). Signatures in script order (wsh) or in their key's slot
    (tapscript); top-up inputs are left without witness."""
    tx = Transaction.parse(psbt.tx.serialize())
    if isinstance(multisig, tapscript.TapscriptMultisig):
        slots = {i: sigs[k.pubkey] for i, k in enumerate(multisig.keys) if k.pubkey in sigs}
        tx.vin[0].witness = multisig.witness(slots)
    else:
        ordered = [sigs[k.pubkey] for k in multisig.keys if k.pubkey in sigs]
        tx.vin[0].witness = Witness([b""] + ordered + [multisig.witness_script.data])
    return tx


def finalize(psbt: PSBT, multisig: EpochMultisig) -> Transaction:
    """Build the witness from the first k valid partial signatures in script order.

    Tapscript: exactly k signatures (NUMEQUAL), each in its key's slot, the rest empty.
    """
    sigs: list[bytes] = []
    slots: dict[int, bytes] = {}
    present = signatures(psbt, 0, multisig)
    taproot = isinstance(multisig, tapscript.TapscriptMultisig)
    msg = sighash(psbt, 0, multisig) if taproot and present else b""  # one per transaction
    for i, key in enumerate(multisig.keys):
        sig = present.get(key.pubkey)
        if sig is None:
            continue
        if taproot:
            tapscript.check_signature(multisig, key.pubkey, sig, msg)  # type: ignore[arg-type]
        else:
            verify_partial_sig(psbt, 0, multisig, key.pubkey, sig)
        sigs.append(sig)
        slots[i] = sig
        if len(sigs) == multisig.threshold:
            break
    if len(sigs) < multisig.threshold:
        raise TemplateError(
            f"{len(sigs)} valid signature(s) on the coin input, {multisig.threshold} needed"
        )
    tx = Transaction.parse(psbt.tx.serialize())
    if isinstance(multisig, tapscript.TapscriptMultisig):
        tx.vin[0].witness = multisig.witness(slots)
    else:
        tx.vin[0].witness = Witness([b""] + sigs + [multisig.witness_script.data])
    for i in range(1, len(tx.vin)):
        final = psbt.inputs[i].final_scriptwitness
        if final is None:
            raise TemplateError(f"top-up input {i} is not finalized")
        tx.vin[i].witness = final
    return tx
