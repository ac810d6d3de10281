"""Catching up with checkpoints the quorum made without this appliance.

An appliance that was offline while others signed still expects an old coin. The
node can show it the checkpoint transactions since then; each is accepted only if
it spends the coin the appliance expects and its witness carries k valid signatures
of that epoch's keys. k signatures are proof that a quorum of appliances signed it
under their own policies, so nothing is taken on the node's word.
"""

from __future__ import annotations

from embit.ec import PublicKey, Signature
from embit.transaction import SIGHASH, Transaction

from appliance.journal import Candidate, JournalState
from bftanchor.descriptor import EpochMultisig, multisig_for
from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.template import Coin, Outpoint

MAX_LINEAGE = 1000


def quorum_signers(tx: Transaction, coin: Coin, ms: EpochMultisig) -> list[PublicKey]:
    """Keys whose valid signatures the coin input's witness carries (CHECKMULTISIG order)."""
    items = tx.vin[0].witness.items if tx.vin[0].witness else []
    if len(items) < 2 or items[0] != b"" or items[-1] != ms.witness_script.data:
        return []
    msg = tx.sighash_segwit(0, ms.witness_script, coin.value, SIGHASH.ALL)
    keys = [k.pubkey for k in ms.keys]
    found: list[PublicKey] = []
    ki = 0
    for sig in items[1:-1]:
        if not sig or sig[-1] != SIGHASH.ALL:
            return []
        try:
            parsed = Signature.parse(sig[:-1])
        except Exception:
            return []
        while ki < len(keys) and not keys[ki].verify(parsed, msg):
            ki += 1
        if ki == len(keys):
            return []
        found.append(keys[ki])
        ki += 1
    return found


def verify_lineage(
    raw_txs: list[str], state: JournalState, records: dict[int, EpochRecord], magic: bytes
) -> tuple[list[Candidate], list[str]]:
    """Checkpoints to adopt, in order, or the problems that stop the walk."""
    if not isinstance(raw_txs, list) or len(raw_txs) > MAX_LINEAGE:
        return [], [f"lineage must be a list of at most {MAX_LINEAGE} raw transactions"]
    coins = state.spendable()
    highest = state.highest
    adopted: list[Candidate] = []
    connected = False
    for i, raw in enumerate(raw_txs):
        where = f"lineage[{i}]"
        try:
            tx = Transaction.from_string(raw)
        except Exception as exc:
            return adopted, [f"{where} does not parse as a transaction: {exc}"]
        txid = tx.txid().hex()
        if state.by_txid(txid) is not None:
            continue
        if not tx.vin or len(tx.vout) < 2:
            return adopted, [f"{where} is not a checkpoint transaction"]
        outpoint = Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout)
        coin = coins.get(outpoint)
        if coin is None and not connected:
            continue  # older history the node sends to every peer alike; not ours to judge
        if coin is None:
            return adopted, [f"{where} ({txid}) spends {outpoint}, not a coin this appliance knows"]
        connected = True
        record = records.get(coin.epoch)
        if record is None:
            return adopted, [f"{where}: no certified record for epoch {coin.epoch}"]
        ms = multisig_for(record)
        signers = quorum_signers(tx, coin, ms)
        if len(signers) < ms.threshold:
            return adopted, [
                f"{where} ({txid}) carries {len(signers)} valid signature(s) of epoch "
                f"{coin.epoch}'s keys, {ms.threshold} needed"
            ]
        try:
            payload = Payload.from_script(tx.vout[0].script_pubkey.data, magic)
        except CheckpointError as exc:
            return adopted, [f"{where} ({txid}): {exc}"]
        if payload.epoch != coin.epoch:
            return adopted, [
                f"{where}: payload epoch {payload.epoch} on an epoch {coin.epoch} coin"
            ]
        if highest is not None and (payload.epoch, payload.round) <= highest:
            return adopted, [
                f"{where}: epoch {payload.epoch} round {payload.round} does not advance on "
                f"epoch {highest[0]} round {highest[1]}"
            ]
        dest_spk = tx.vout[1].script_pubkey
        if dest_spk == ms.script_pubkey:
            dest_epoch = coin.epoch
        elif coin.epoch + 1 in records and (
            multisig_for(records[coin.epoch + 1]).script_pubkey == dest_spk
        ):
            dest_epoch = coin.epoch + 1
        else:
            return adopted, [f"{where} pays the coin to an unknown script"]
        cand = Candidate(
            txid=txid,
            epoch=payload.epoch,
            round=payload.round,
            payload=payload.encode().hex(),
            input=outpoint,
            input_value=coin.value,
            coin_value=tx.vout[1].value,
            dest_epoch=dest_epoch,
            fee=max(coin.value - sum(o.value for o in tx.vout), 0),
            handover=dest_epoch != coin.epoch,
        )
        adopted.append(cand)
        highest = (payload.epoch, payload.round)
        new_coin = Coin(Outpoint(txid, 1), cand.coin_value, dest_epoch)
        coins = {outpoint: coin, new_coin.outpoint: new_coin}
    if (
        raw_txs
        and not connected
        and not all(state.by_txid(Transaction.from_string(r).txid().hex()) for r in raw_txs)
    ):
        return [], ["lineage does not connect to any coin this appliance knows"]
    return adopted, []
