"""What the appliance will sign: a pure function from a request to a verdict.

The appliance trusts no one who sends it a request. It rebuilds the transaction it
expects from what it knows (the coin, the QC, the certified epoch records) and accepts
the PSBT only if it is that transaction, byte for byte, but for the fee. Every failed
rule adds a reason a person can read; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embit.psbt import PSBT

from appliance.journal import Candidate, JournalState, signing_conflicts
from bftanchor.descriptor import EpochMultisig, multisig_for
from bftanchor.epoch import EpochRecord, verify_certificate
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.qc import QC, verify_qc
from bftanchor.template import (
    LOCKTIME,
    P2WPKH_WITNESS,
    TX_VERSION,
    Coin,
    Outpoint,
    build_checkpoint_tx,
    estimate_vsize,
    input_sequence,
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
            if records[r.epoch].body_json() != r.body_json():
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


def evaluate(
    psbt: PSBT,
    qc: QC,
    records: dict[int, EpochRecord],
    journal: JournalState,
    limits: Limits,
    magic: bytes,
    record_problems: list[str] | None = None,
) -> Verdict:
    """Decide a sign request. `records` are the records the appliance trusts."""
    v = Verdict(ok=True)
    for p in record_problems or []:
        v.refuse(p)

    # 1. The QC verifies against the record held for its epoch.
    record = records.get(qc.epoch)
    if record is None:
        v.refuse(f"no certified epoch record held for the QC's epoch {qc.epoch}")
        return v
    try:
        signers = verify_qc(qc, record)
        v.summary["qc_signers"] = signers
    except CheckpointError as exc:
        v.refuse(f"QC does not verify: {type(exc).__name__}: {exc}")
        return v
    payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=magic)
    v.summary.update(epoch=qc.epoch, round=qc.round, commit_state_id=qc.commit_state_id.hex())

    tx = psbt.tx
    # 2. Shape of the transaction.
    if tx.version != TX_VERSION:
        v.refuse(f"nVersion is {tx.version}, expected {TX_VERSION}")
    if tx.locktime != LOCKTIME:
        v.refuse(f"nLockTime is {tx.locktime}, expected {LOCKTIME}")
    if not tx.vin:
        v.refuse("the transaction has no inputs")
        return v
    for i, txin in enumerate(tx.vin):
        if txin.sequence != input_sequence(i):
            v.refuse(
                f"input {i} nSequence is {txin.sequence:#x}, expected {input_sequence(i):#x}"
            )
    if len(tx.vout) < 2:
        v.refuse(f"the transaction has {len(tx.vout)} output(s); a checkpoint has 2 or 3")
        return v

    # 3. Input 0 spends the coin it expects, locked by the QC's epoch multisig.
    outpoint = Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout)
    coins = journal.spendable()
    coin: Coin | None = coins.get(outpoint)
    v.summary["input"] = str(outpoint)
    if coin is None:
        v.refuse(
            f"input 0 spends {outpoint}, not the expected coin ({', '.join(str(o) for o in coins)})"
        )
        return v
    if coin.epoch != qc.epoch:
        v.refuse(f"the coin belongs to epoch {coin.epoch} but the QC is for epoch {qc.epoch}")
        return v
    source = multisig_for(record)
    utxo = psbt.inputs[0].witness_utxo
    if utxo is None:
        v.refuse("input 0 carries no witness_utxo")
        return v
    if utxo.script_pubkey != source.script_pubkey:
        v.refuse(f"input 0's script is not epoch {qc.epoch}'s multisig")
    if utxo.value != coin.value:
        v.refuse(f"input 0 claims value {utxo.value}, the coin holds {coin.value}")
    ws = psbt.inputs[0].witness_script
    if ws is not None and ws != source.witness_script:
        v.refuse("input 0's witness script is not epoch's multisig script")

    # 4. Output 0 is exactly this QC's payload.
    if tx.vout[0].value != 0:
        v.refuse(f"output 0 carries {tx.vout[0].value} sat, the payload output carries 0")
    if tx.vout[0].script_pubkey.data != payload.script():
        try:
            got = Payload.from_script(tx.vout[0].script_pubkey.data, magic=None)
            v.refuse(
                "output 0 is not this QC's payload (it carries epoch "
                f"{got.epoch} round {got.round} commit_state_id {got.commit_state_id.hex()}"
                f"{'' if got.magic == magic else ', magic ' + got.magic.hex()})"
            )
        except CheckpointError as exc:
            v.refuse(f"output 0 is not a checkpoint payload: {exc}")

    # 5. Output 1 pays the coin to this epoch's multisig or, for a handover, the next's.
    dest_spk = tx.vout[1].script_pubkey
    dest: EpochMultisig | None = None
    handover = False
    if dest_spk == source.script_pubkey:
        dest = source
    else:
        nxt = records.get(qc.epoch + 1)
        if nxt is not None and multisig_for(nxt).script_pubkey == dest_spk:
            dest, handover = multisig_for(nxt), True
        else:
            v.refuse(
                "output 1 pays the coin to a script that is neither epoch "
                f"{qc.epoch}'s multisig nor a certified epoch {qc.epoch + 1} multisig"
            )
    if handover and qc.round > record.end_round:
        v.refuse(f"handover at round {qc.round} is after epoch {qc.epoch}'s end")

    # 6. Top-ups: extra inputs only fund the fee; only their change may leave.
    topups_in = 0
    for i in range(1, len(tx.vin)):
        if Outpoint(tx.vin[i].txid.hex(), tx.vin[i].vout) in coins:
            v.refuse(f"input {i} spends a checkpoint coin")
        u = psbt.inputs[i].witness_utxo
        if u is None:
            v.refuse(f"top-up input {i} carries no witness_utxo")
            continue
        if u.script_pubkey in (source.script_pubkey, dest_spk):
            v.refuse(f"top-up input {i} is locked by a checkpoint multisig")
        topups_in += u.value
    if len(tx.vout) > 3:
        v.refuse(f"{len(tx.vout)} outputs; a checkpoint has at most 3")
    if len(tx.vout) == 3:
        if len(tx.vin) < 2:
            v.refuse("output 2 (top-up change) without any top-up input")
        change = tx.vout[2].script_pubkey
        if change in (source.script_pubkey, dest_spk) or change.data[:1] == b"\x6a":
            v.refuse("output 2 is not top-up change")

    if not v.ok or dest is None:
        return v

    # 7. Fee within the appliance's own limits.
    total_in = coin.value + topups_in
    total_out = sum(o.value for o in tx.vout)
    fee = total_in - total_out
    vsize = estimate_vsize(tx, source, P2WPKH_WITNESS * (len(tx.vin) - 1))
    rate = fee / vsize
    v.summary.update(
        fee=fee,
        vsize=vsize,
        fee_rate=round(rate, 3),
        handover=handover,
        dest_epoch=dest.epoch,
        coin_value=tx.vout[1].value,
    )
    if fee <= 0:
        v.refuse(f"outputs exceed inputs (fee {fee} sat)")
    change = sum(o.value for o in tx.vout[2:])
    if change > topups_in:
        # Change may only return what the top-ups brought: the coin itself never
        # leaves through "change" to an address the appliance cannot judge.
        v.refuse(f"output 2 returns {change} sat, more than the top-ups' {topups_in} sat")
    if fee > limits.max_fee_sat:
        v.refuse(f"fee {fee} sat exceeds the limit of {limits.max_fee_sat} sat")
    if rate > limits.max_fee_rate:
        v.refuse(f"fee rate {rate:.1f} sat/vB exceeds the limit of {limits.max_fee_rate} sat/vB")

    # 8. Byte-for-byte: the transaction it would build itself, with that fee.
    if len(tx.vin) == 1 and len(tx.vout) == 2 and fee > 0:
        expected = build_checkpoint_tx(coin, payload, dest, fee)
        if expected.serialize() != tx.serialize():
            v.refuse("the transaction differs from the checkpoint the appliance would build")

    # 9. The journal allows it.
    txid = tx.txid().hex()
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
    return v
