"""What the appliance will sign: a pure function from a request to a verdict.

The appliance trusts no one who sends it a request. It rebuilds the transaction it
expects from what it knows (the coin, the QC, the certified epoch records) and accepts
the PSBT only if it is that transaction, byte for byte, but for the fee. Every failed
rule adds a reason a person can read; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from appliance.journal import Candidate, JournalState, Release, signing_conflicts
from bftanchor.bftsig import verify_each
from bftanchor.coinpath import paid_epoch
from bftanchor.descriptor import EpochMultisig, multisig_for, origins
from bftanchor.epoch import EpochRecord, verify_certificate
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.qc import QC, SignatureCheck, verify_qc
from bftanchor.tapscript import TapscriptMultisig, taproot_input_problems
from bftanchor.template import (
    COIN_SEQUENCE,
    DUST,
    LOCKTIME,
    P2WPKH_WITNESS,
    TOPUP_SEQUENCE,
    TX_VERSION,
    Coin,
    Outpoint,
    estimate_vsize,
    input_sequence,
    signatures,
    verify_partial_sig,
)


@dataclass(frozen=True)
class Limits:
    max_fee_sat: int = 100_000
    max_fee_rate: float = 200.0  # sat/vB


@dataclass
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    candidate: Candidate | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    # Proven checkpoints (quorum-signed lineage) the decision relied on; written to the
    # journal only together with the signature they allow.
    adopted: list[Candidate] = field(default_factory=list)
    released: list[Release] = field(default_factory=list)

    def refuse(self, reason: str) -> None:
        self.ok = False
        self.reasons.append(reason)


def trusted_records(
    held: dict[int, EpochRecord], offered: list[EpochRecord]
) -> tuple[dict[int, EpochRecord], list[str]]:
    """Extend the records held with offered ones that the held quorum certified."""
    records = dict(held)
    problems: list[str] = []
    for r in sorted(offered, key=lambda r: r.epoch):
        if r.epoch in records:
            if records[r.epoch] is not r and records[r.epoch].body_json() != r.body_json():
                problems.append(f"offered record for epoch {r.epoch} differs from the one held")
            continue
        prev = records.get(r.epoch - 1)
        if prev is None:
            problems.append(f"offered record for epoch {r.epoch} has no held predecessor")
            continue
        try:
            verify_certificate(r, prev)
        except CheckpointError as exc:
            problems.append(f"record for epoch {r.epoch} is not certified: {exc}")
            continue
        records[r.epoch] = r
    return records, problems


def in_window(record: EpochRecord, round: int, window: int) -> bool:
    """The handover window: the last W rounds of the epoch, end_round - W < r <= end_round."""
    return record.end_round - window < round <= record.end_round


def evaluate(
    psbt: PSBT,
    qc: QC,
    records: dict[int, EpochRecord],
    journal: JournalState,
    limits: Limits,
    magic: bytes,
    record_problems: list[str] | None = None,
    handover_window: int | None = None,
    check: SignatureCheck = verify_each,
) -> Verdict:
    """Decide a sign request. `records` are the records the appliance trusts; `journal`
    already includes the proven lineage this request carried; `check` verifies the QC's
    signatures (see qc.verify_qc). Never raises: anything unforeseen is a refusal that
    names it."""
    v = Verdict(ok=True)
    for p in record_problems or []:
        v.refuse(p)
    try:
        _evaluate(v, psbt, qc, records, journal, limits, magic, handover_window, check)
    except Exception as exc:  # a verdict, never an exception: name what broke
        v.refuse(f"request could not be judged: {type(exc).__name__}: {exc}")
        v.candidate = None
    if not v.ok:
        v.candidate = None
    return v


def _evaluate(
    v: Verdict,
    psbt: PSBT,
    qc: QC,
    records: dict[int, EpochRecord],
    journal: JournalState,
    limits: Limits,
    magic: bytes,
    handover_window: int | None,
    check: SignatureCheck,
) -> None:
    # 1. The QC verifies against the record held for its epoch. Its signatures are
    # checked after everything else: what follows reads only the QC's epoch, round and
    # commit_state_id, and the appliance may have them verified meanwhile (by its QC
    # helper, appliance/qcverify.py). A QC that does not verify is then the only reason
    # given, beside the record problems, as if it had been checked first.
    record = records.get(qc.epoch)
    v.summary.update(epoch=qc.epoch, round=qc.round, commit_state_id=qc.commit_state_id.hex())
    if record is None:
        v.refuse(f"no certified epoch record held for the QC's epoch {qc.epoch} "
                 f"(held: {', '.join(str(e) for e in sorted(records)) or 'none'})")
        return
    shown, summary = len(v.reasons), dict(v.summary)
    unforeseen: Exception | None = None
    try:
        _judge(v, psbt, qc, record, records, journal, limits, magic, handover_window)
    except Exception as exc:  # raised below, unless the QC is what is wrong
        unforeseen = exc
    try:
        signers = verify_qc(qc, record, check)
    except CheckpointError as exc:
        del v.reasons[shown:]
        v.summary = summary
        v.refuse(f"QC does not verify: {type(exc).__name__}: {exc}")
        v.candidate = None
        return
    if unforeseen is not None:
        raise unforeseen
    v.summary["qc_signers"] = signers


def _judge(
    v: Verdict,
    psbt: PSBT,
    qc: QC,
    record: EpochRecord,
    records: dict[int, EpochRecord],
    journal: JournalState,
    limits: Limits,
    magic: bytes,
    handover_window: int | None,
) -> None:
    """Steps 1 (the record's multisig) to 9 of evaluate, for a QC not yet verified."""
    try:
        source = multisig_for(record)
    except CheckpointError as exc:
        v.refuse(f"epoch {qc.epoch}'s record cannot lock a coin: {exc}")
        return
    payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=magic)

    tx = psbt.tx
    # embit builds psbt.tx from each input's outpoint and nSequence alone (no scriptSig, no
    # witness): this is the transaction signed, its serialization the one txid hashes.
    raw = tx.serialize()
    # 2. Shape of the transaction.
    if tx.version != TX_VERSION:
        v.refuse(f"nVersion is {tx.version}, expected {TX_VERSION}")
    if tx.locktime != LOCKTIME:
        v.refuse(f"nLockTime is {tx.locktime}, expected {LOCKTIME}")
    if not tx.vin:
        v.refuse("the transaction has no inputs, expected the coin as input 0")
        return
    if len(psbt.inputs) != len(tx.vin) or len(psbt.outputs) != len(tx.vout):
        v.refuse("the PSBT's input/output maps do not match the transaction")
        return
    for i, txin in enumerate(tx.vin):
        want = input_sequence(i)
        if txin.sequence != want:
            v.refuse(f"input {i} nSequence is {txin.sequence:#x}, expected {want:#x}")
        if txin.script_sig.data:
            v.refuse(f"input {i} carries a scriptSig ({len(txin.script_sig.data)} bytes), "
                     "expected none (segwit only)")
    # Every input signs and is signed with SIGHASH_ALL (BIP174: a signer that will not
    # use the requested type must not sign at all).
    for i, inp in enumerate(psbt.inputs):
        if inp.sighash_type is not None and inp.sighash_type != SIGHASH.ALL:
            v.refuse(f"input {i} asks for sighash type {inp.sighash_type:#x}, expected "
                     f"SIGHASH_ALL ({SIGHASH.ALL:#x}) only")
    if len(tx.vout) < 2 or len(tx.vout) > 3:
        v.refuse(f"the transaction has {len(tx.vout)} output(s), expected 2 or 3 "
                 "(payload, coin, optional top-up change)")
        if len(tx.vout) < 2:
            return

    # 3. Input 0 spends the coin it expects, locked by the QC's epoch multisig.
    outpoint = Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout)
    coins = journal.spendable()
    coin: Coin | None = coins.get(outpoint)
    v.summary["input"] = str(outpoint)
    if coin is None:
        v.refuse(
            f"input 0 spends {outpoint}, not the expected coin "
            f"(expected one of: {', '.join(str(o) for o in coins)})"
        )
        return
    if coin.epoch != qc.epoch:
        v.refuse(f"the coin belongs to epoch {coin.epoch} but the QC is for epoch {qc.epoch}")
        return
    utxo = psbt.inputs[0].witness_utxo
    if utxo is None:
        v.refuse("input 0 carries no witness_utxo, expected the coin's amount and script")
        return
    if utxo.script_pubkey != source.script_pubkey:
        v.refuse(f"input 0's witness_utxo script is {utxo.script_pubkey.data.hex()}, expected "
                 f"epoch {qc.epoch}'s multisig {source.script_pubkey.data.hex()}")
    if utxo.value != coin.value:
        v.refuse(f"input 0 claims value {utxo.value}, expected the coin's {coin.value}")
    ws = psbt.inputs[0].witness_script
    if ws is not None and ws != source.witness_script:
        v.refuse(f"input 0's witness script is not epoch {qc.epoch}'s multisig script")
    # What a device needs to sign, checked before the journal binds the coin (a device
    # that cannot sign fails after it): the script, and an input not already finalized.
    if ws is None and not isinstance(source, TapscriptMultisig):
        v.refuse(f"input 0 carries no witness_script, expected epoch {qc.epoch}'s multisig "
                 "script")
    if isinstance(source, TapscriptMultisig) and not psbt.inputs[0].taproot_scripts:
        v.refuse(f"input 0 carries no tapscript leaf, expected epoch {qc.epoch}'s "
                 "sortedmulti_a leaf")
    if psbt.inputs[0].final_scriptwitness is not None or psbt.inputs[0].final_scriptsig:
        v.refuse("input 0 is already finalized, expected the coin input unsigned")
    nwu = psbt.inputs[0].non_witness_utxo
    if nwu is not None:
        if nwu.txid() != tx.vin[0].txid:
            v.refuse(f"input 0's non_witness_utxo is transaction {nwu.txid().hex()}, "
                     f"expected {outpoint.txid}")
        elif outpoint.vout >= len(nwu.vout) or nwu.vout[outpoint.vout].value != coin.value or (
            nwu.vout[outpoint.vout].script_pubkey != source.script_pubkey
        ):
            v.refuse(f"input 0's non_witness_utxo output {outpoint.vout} is not the coin "
                     f"({coin.value} sat to epoch {qc.epoch}'s multisig)")
    if isinstance(source, TapscriptMultisig):
        for reason in taproot_input_problems(psbt.inputs[0], source):
            v.refuse(reason)
        got_der = psbt.inputs[0].taproot_bip32_derivations
    else:
        got_der = psbt.inputs[0].bip32_derivations
    # The signer finds its key by these: decided here, before the journal binds the coin,
    # rather than by a signer that fails after it (a refusal that left a signing row).
    if origins(got_der) != source.input_origins:
        v.refuse(f"input 0's key derivations are not epoch {qc.epoch}'s multisig keys with "
                 f"their origins ({len(got_der)} given, {len(source.input_origins)} "
                 "expected)")

    # 4. Output 0 is exactly this QC's payload.
    if tx.vout[0].value != 0:
        v.refuse(f"output 0 carries {tx.vout[0].value} sat, expected 0 (the payload output)")
    if tx.vout[0].script_pubkey.data != payload.script():
        try:
            got = Payload.from_script(tx.vout[0].script_pubkey.data, magic=None)
            v.refuse(
                f"output 0 carries epoch {got.epoch} round {got.round} commit_state_id "
                f"{got.commit_state_id.hex()}"
                f"{'' if got.magic == magic else ' magic ' + got.magic.hex()}, expected "
                f"this QC's epoch {qc.epoch} round {qc.round} commit_state_id "
                f"{qc.commit_state_id.hex()}{'' if got.magic == magic else ' magic ' + magic.hex()}"
            )
        except CheckpointError as exc:
            v.refuse(f"output 0 is not a checkpoint payload ({exc}), expected this QC's payload")

    # 5. Output 1 pays the coin to this epoch's multisig or, for a handover, the next's.
    dest_spk = tx.vout[1].script_pubkey
    dest: EpochMultisig | None = None
    handover = False
    nxt = records.get(qc.epoch + 1)
    paid = paid_epoch(dest_spk, qc.epoch, records)
    if paid == qc.epoch:
        dest = source
    elif paid is not None and nxt is not None:
        dest, handover = multisig_for(nxt), True
    else:
        if nxt is not None:
            try:
                multisig_for(nxt)
            except CheckpointError as exc:
                v.refuse(f"epoch {qc.epoch + 1}'s record cannot lock a coin: {exc}")
        v.refuse(
            f"output 1 pays the coin to {dest_spk.data.hex()}, expected epoch "
            f"{qc.epoch}'s multisig or, for a handover, a certified epoch "
            f"{qc.epoch + 1} multisig"
            + ("" if nxt is not None else f" (no epoch {qc.epoch + 1} record held)")
        )
    if handover_window is not None:
        inside = in_window(record, qc.round, handover_window)
        window = (f"({record.end_round - handover_window}, {record.end_round}]")
        if handover and not inside:
            v.refuse(f"handover at round {qc.round} is outside epoch {qc.epoch}'s handover "
                     f"window {window}")
        if not handover and dest is not None and inside:
            v.refuse(f"round {qc.round} is in epoch {qc.epoch}'s handover window {window}: "
                     f"expected a handover to epoch {qc.epoch + 1}, found a regular checkpoint")
    elif handover and qc.round > record.end_round:
        v.refuse(f"handover at round {qc.round} is after epoch {qc.epoch}'s end "
                 f"{record.end_round}")

    # 6. Top-ups: extra inputs only fund the fee. Their amounts are proven by their full
    # previous transactions (segwit v0 signatures commit only to the coin's own amount,
    # so a declared amount alone could hide coin value flowing to "change").
    topups_in = 0
    topup_outpoints: list[Outpoint] = []
    for i in range(1, len(tx.vin)):
        op = Outpoint(tx.vin[i].txid.hex(), tx.vin[i].vout)
        if op in topup_outpoints:
            # Counted twice its amount would be "proven" twice: a transaction consensus
            # rejects, with a fee the appliance never really checked.
            v.refuse(f"input {i} spends {op} again, expected each top-up once")
            continue
        topup_outpoints.append(op)
        if op in coins or op == outpoint:
            v.refuse(f"input {i} spends a checkpoint coin ({op}), expected a fee-wallet coin")
        prev = psbt.inputs[i].non_witness_utxo
        if prev is None:
            v.refuse(f"top-up input {i} ({op}) carries no non_witness_utxo, expected its full "
                     "previous transaction to prove its amount")
            continue
        if prev.txid() != tx.vin[i].txid:
            v.refuse(f"top-up input {i}'s non_witness_utxo is transaction {prev.txid().hex()}, "
                     f"expected {op.txid}")
            continue
        if op.vout >= len(prev.vout):
            v.refuse(f"top-up input {i} spends output {op.vout} of a transaction with "
                     f"{len(prev.vout)} output(s)")
            continue
        real = prev.vout[op.vout]
        u = psbt.inputs[i].witness_utxo
        if u is not None and (u.value != real.value or u.script_pubkey != real.script_pubkey):
            v.refuse(f"top-up input {i} declares {u.value} sat, its previous transaction "
                     f"proves {real.value} sat")
        elif u is None and isinstance(source, TapscriptMultisig):
            # BIP341 signs every input's amount and script, read from witness_utxo: without
            # it the signer would fail only after the journal had bound the coin.
            v.refuse(f"top-up input {i} carries no witness_utxo, expected its output "
                     "(a tapscript signature commits to every input's amount and script)")
        spk = real.script_pubkey
        if spk in (source.script_pubkey, dest_spk):
            v.refuse(f"top-up input {i} is locked by a checkpoint multisig, expected a "
                     "fee-wallet coin")
        elif not _is_p2wpkh(spk.data):
            v.refuse(f"top-up input {i} is locked by {spk.data.hex()}, expected a P2WPKH "
                     "fee-wallet coin")
        topups_in += real.value
    change_out: TransactionOutput | None = None
    if len(tx.vout) == 3:
        change_out = tx.vout[2]
        if len(tx.vin) < 2:
            v.refuse("output 2 (top-up change) without any top-up input, expected 2 outputs")
        change = change_out.script_pubkey
        if change in (source.script_pubkey, dest_spk) or change.data[:1] == b"\x6a":
            v.refuse("output 2 is a checkpoint script or a payload, expected top-up change")
        elif not _is_p2wpkh(change.data):
            # The fee wallet's change is P2WPKH (as its top-ups are); anything else may be
            # non-standard, and a level no node relays is a signature spent for nothing.
            v.refuse(f"output 2 pays {change.data[:64].hex()}, expected P2WPKH top-up change")
        if change_out.value <= DUST:
            v.refuse(f"output 2 returns {change_out.value} sat, expected more than the dust "
                     f"limit of {DUST} sat (smaller change goes to the fee)")
    if len(tx.vin) > 1 and tx.vout[1].value < coin.value:
        v.refuse(f"output 1 returns {tx.vout[1].value} sat to the coin with top-ups present, "
                 f"expected at least the coin's {coin.value} (top-ups pay the fee)")

    # 7. Fee within the appliance's own limits, from proven amounts only.
    total_in = coin.value + topups_in
    total_out = sum(o.value for o in tx.vout)
    fee = total_in - total_out
    vsize = estimate_vsize(tx, source, P2WPKH_WITNESS * (len(tx.vin) - 1), len(raw))
    rate = fee / vsize
    v.summary.update(
        fee=fee,
        vsize=vsize,
        fee_rate=round(rate, 3),
        handover=handover,
        dest_epoch=dest.epoch if dest is not None else None,
        coin_value=tx.vout[1].value,
    )
    if fee <= 0:
        v.refuse(f"outputs ({total_out} sat) exceed the proven inputs ({total_in} sat)")
    change_value = sum(o.value for o in tx.vout[2:])
    if change_value > topups_in:
        # Change may only return what the top-ups brought: the coin itself never
        # leaves through "change" to an address the appliance cannot judge.
        v.refuse(f"output 2 returns {change_value} sat, more than the top-ups' {topups_in} sat")
    if fee > limits.max_fee_sat:
        v.refuse(f"fee {fee} sat exceeds the limit of {limits.max_fee_sat} sat")
    if rate > limits.max_fee_rate:
        v.refuse(f"fee rate {rate:.1f} sat/vB exceeds the limit of {limits.max_fee_rate} sat/vB")

    if dest is None:
        return
    # 8. Byte-for-byte: the transaction it would build itself, with that fee.
    vin = [TransactionInput(bytes.fromhex(outpoint.txid), outpoint.vout, sequence=COIN_SEQUENCE)]
    vin += [TransactionInput(bytes.fromhex(o.txid), o.vout, sequence=TOPUP_SEQUENCE)
            for o in topup_outpoints]
    vout = [TransactionOutput(0, Script(payload.script())),
            TransactionOutput(tx.vout[1].value, dest.script_pubkey)]
    if change_out is not None:
        vout.append(TransactionOutput(change_out.value, change_out.script_pubkey))
    expected = Transaction(version=TX_VERSION, vin=vin, vout=vout, locktime=LOCKTIME)
    if expected.serialize() != raw:
        v.refuse("the transaction differs from the checkpoint the appliance would build")

    # Signatures already on the coin input must be real ones of this transaction: the
    # signer would keep a junk one under this appliance's key and return none of its own
    # after the journal had bound the coin, a refusal that left a signing row behind.
    if v.ok:
        present = {**psbt.inputs[0].partial_sigs, **signatures(psbt, 0, source)}
        for pub, sig in present.items():
            try:
                verify_partial_sig(psbt, 0, source, pub, sig)
            except CheckpointError as exc:
                v.refuse(f"input 0 carries a partial signature that is not valid ({exc}), "
                         f"expected none or valid signatures by epoch {qc.epoch}'s keys")
                return

    # 9. The journal allows it.
    txid = hashlib.sha256(hashlib.sha256(raw).digest()).digest()[::-1].hex()
    v.summary["txid"] = txid
    cand = Candidate(
        txid=txid,
        epoch=qc.epoch,
        round=qc.round,
        payload=payload.encode().hex(),
        input=outpoint,
        input_value=coin.value,
        coin_value=tx.vout[1].value,
        dest_epoch=dest.epoch,
        fee=fee,
        handover=handover,
    )
    for reason in signing_conflicts(journal, cand):
        v.refuse(f"journal: {reason}")
    v.candidate = cand


def _is_p2wpkh(spk: bytes) -> bool:
    return len(spk) == 22 and spk[:2] == b"\x00\x14"
