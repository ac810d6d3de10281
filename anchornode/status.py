"""`bft-anchor status`: what an operator needs to know about the checkpoint chain.

Read straight from the PoW chain (not from any node's memory): the coin, the last
checkpoints with who signed and who missed them, how long since the last one, and
an alert when no checkpoint has confirmed for too many blocks (a stall, mid-epoch
or not) and when the coin's epoch has gone too many blocks without one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from anchornode.pow.follow import CoinFollower, confirmed_height
from anchornode.pow.rpc import PowRpc
from appliance.lineage import quorum_signers
from bftanchor.coinpath import next_coin
from bftanchor.deployment import Deployment
from bftanchor.descriptor import multisig_for
from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.template import Coin, Outpoint


@dataclass
class ChainStatus:
    coin: str
    coin_epoch: int
    coin_value: int
    tip: int
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    coin_epoch_known: bool = True  # False: the coin went to a wallet no held record builds

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def chain_status(
    rpc: PowRpc,
    deployment: Deployment,
    records: dict[int, EpochRecord],
    last: int = 10,
    alert_blocks: int = 50,
) -> ChainStatus:
    start = confirmed_height(rpc, deployment.genesis.outpoint.txid)
    tip = int(rpc.getblockcount())
    coin = deployment.genesis
    status = ChainStatus(str(coin.outpoint), coin.epoch, coin.value, tip)
    if start is None:
        status.alerts.append("the genesis coin is not confirmed")
        return status
    follower = CoinFollower(rpc, deployment.genesis.outpoint, start)
    epoch_entered = start
    seen_epochs: set[int] = set()
    rows = []
    for spend in follower.poll():
        rec = records.get(coin.epoch)
        if rec is None:
            status.alerts.append(f"no record for epoch {coin.epoch}: cannot follow further")
            break
        ms = multisig_for(rec)
        ids = {k.pubkey: k.validator_id for k in ms.keys}
        signed = sorted(ids[p] for p in quorum_signers(spend.tx, coin, ms))
        moved = next_coin(coin, spend.tx, records)
        dest_epoch = coin.epoch if moved is None else moved.epoch
        if moved is None:
            # The coin went to a wallet no known record builds: most likely a handover to
            # an epoch whose record the QC source does not (yet) hold. Say so; do not judge
            # the spends after it by the wrong epoch's keys.
            status.alerts.append(
                f"the coin left epoch {coin.epoch}'s wallet in {spend.txid} for a wallet no "
                f"known record builds (no record for epoch {coin.epoch + 1}?): cannot follow "
                "further; is the QC source current?")
            status.coin_epoch_known = False
            dest_epoch = coin.epoch + 1
        try:
            p = Payload.from_script(spend.tx.vout[0].script_pubkey.data, deployment.magic)
            er = (p.epoch, p.round)
            seen_epochs.add(p.epoch)
        except CheckpointError:
            er = (None, None)
        rows.append(
            {
                "txid": spend.txid,
                "height": spend.height,
                "epoch": er[0],
                "round": er[1],
                "signed_by": signed,
                "missed": sorted(set(ids.values()) - set(signed)),
                "handover": dest_epoch != coin.epoch,
                "block_time": spend.block_time,
            }
        )
        if dest_epoch != coin.epoch:
            epoch_entered = spend.height
        coin = Coin(Outpoint(spend.txid, 1), spend.tx.vout[1].value, dest_epoch)
        if not status.coin_epoch_known:
            break
    status.coin, status.coin_epoch, status.coin_value = str(coin.outpoint), coin.epoch, coin.value
    status.checkpoints = rows[-last:]
    # A stall anywhere, mid-epoch included: no checkpoint for alert_blocks blocks.
    last_height = rows[-1]["height"] if rows else start
    if tip - last_height >= alert_blocks:
        status.alerts.append(
            f"ALERT: no checkpoint for {tip - last_height} blocks, since height {last_height} "
            f"(limit {alert_blocks})"
        )
    if status.coin_epoch_known and coin.epoch not in seen_epochs and \
            tip - epoch_entered >= alert_blocks:
        status.alerts.append(
            f"ALERT: epoch {coin.epoch} has no checkpoint {tip - epoch_entered} blocks after "
            f"the coin entered it (limit {alert_blocks})"
        )
    if rows:
        status.checkpoints[-1]["age_blocks"] = tip - rows[-1]["height"]
        status.checkpoints[-1]["age_seconds"] = int(time.time() - rows[-1]["block_time"])
    return status


def format_status(s: ChainStatus) -> str:
    epoch = s.coin_epoch if s.coin_epoch_known else f"unknown (no record; {s.coin_epoch}?)"
    out = [f"coin {s.coin} ({s.coin_value} sat), epoch {epoch}, tip {s.tip}"]
    if s.checkpoints:
        last = s.checkpoints[-1]
        out.append(f"last checkpoint {last['age_blocks']} block(s) / {last['age_seconds']} s ago")
    out.append(f"{'height':>7} {'epoch':>5} {'round':>7}  {'signed by':<24} missed")
    for c in s.checkpoints:
        out.append(
            f"{c['height']:>7} {c['epoch']!s:>5} {c['round']!s:>7}  "
            f"{','.join(c['signed_by']):<24} {','.join(c['missed']) or '-'}"
            f"{'  HANDOVER' if c['handover'] else ''}"
        )
    out.extend(s.alerts)
    return "\n".join(out)
