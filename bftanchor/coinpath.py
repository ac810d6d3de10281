"""Where a checkpoint moves the coin: output 1, locked by its own epoch's multisig or,
for a handover, by the next epoch's.

The one answer to "which epoch does output 1 pay to", asked by the appliance's policy
and lineage, the node's chain view and peer precheck, the audit, `status` and the
console's decoder. Whether a handover is allowed there (certified record, window) is
each caller's rule; this only says which known script the output is.
"""

from __future__ import annotations

from collections.abc import Mapping

from embit.script import Script
from embit.transaction import Transaction

from bftanchor.descriptor import multisig_for
from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError
from bftanchor.template import Coin, Outpoint

COIN_VOUT = 1


def paid_epoch(
    script_pubkey: Script, coin_epoch: int, records: Mapping[int, EpochRecord]
) -> int | None:
    """coin_epoch when the script is that epoch's multisig, coin_epoch + 1 when it is the
    next epoch's (a handover; only if its record is given), else None. A record that
    cannot lock a coin (CheckpointError building its script) matches nothing."""
    for epoch in (coin_epoch, coin_epoch + 1):
        record = records.get(epoch)
        if record is None:
            continue
        try:
            if multisig_for(record).script_pubkey == script_pubkey:
                return epoch
        except CheckpointError:
            continue
    return None


def next_coin(coin: Coin, tx: Transaction, records: Mapping[int, EpochRecord]) -> Coin | None:
    """The coin `tx` (a spend of `coin`) makes, or None when output 1 pays no known script."""
    if len(tx.vout) <= COIN_VOUT:
        return None
    epoch = paid_epoch(tx.vout[COIN_VOUT].script_pubkey, coin.epoch, records)
    if epoch is None:
        return None
    return Coin(Outpoint(tx.txid().hex(), COIN_VOUT), tx.vout[COIN_VOUT].value, epoch)
