"""Fee ladders: one signing round signs several fee levels of the same checkpoint.

Every replacement costs a whole k-of-n round, so the initiator has the quorum sign
a short ladder at once; whoever holds it broadcasts the next rung when the last one
has been stuck for `stuck_after` blocks, without asking the signers again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from embit.psbt import PSBT
from embit.transaction import Transaction

from anchornode.config import NodeConfig
from anchornode.feewallet import select_topup
from anchornode.pow.rpc import PowRpc
from bftanchor.descriptor import multisig_for
from bftanchor.epoch import EpochRecord
from bftanchor.payload import Payload
from bftanchor.qc import QC
from bftanchor.template import (
    P2WPKH_WITNESS,
    Coin,
    Outpoint,
    build_checkpoint_psbt,
    build_checkpoint_tx,
    estimate_vsize,
)

log = logging.getLogger("bft_anchor.node")

INCREMENTAL_RATE = 1.0  # sat/vB: BIP125's minimum step between replacements (node default)


@dataclass
class Ladder:
    """Fully signed fee levels for one coin: broadcast the next when the last is stuck."""

    coin: Outpoint
    rungs: list[str]  # raw tx hex, ascending fee
    fees: list[int]
    index: int = 0
    since_height: int = 0

    @property
    def txids(self) -> list[str]:
        return [Transaction.from_string(r).txid().hex() for r in self.rungs]

    def climb_if_stuck(self, tip: int, pending_since: int, stuck_after: int) -> Transaction | None:
        """The next rung to broadcast when the current one is stuck, else None."""
        if tip - max(pending_since, self.since_height) < stuck_after:
            return None
        if self.index + 1 >= len(self.rungs):
            return None
        self.index += 1
        self.since_height = tip
        return Transaction.from_string(self.rungs[self.index])


def fee_ladder(base_fee: int, vsize: int, levels: int, factor: float, floor: int = 0) -> list[int]:
    """Ascending fees where each rung could replace the previous under BIP125."""
    fees = [max(base_fee, floor)]
    while len(fees) < levels:
        prev = fees[-1]
        fees.append(max(math.ceil(prev * factor), prev + math.ceil(INCREMENTAL_RATE * vsize) + 1))
    return fees


def fee_wallet(cfg: NodeConfig, rpcs: list[PowRpc]) -> PowRpc | None:
    """The operator's fee wallet on the first PoW node, when top-ups are configured."""
    if not cfg.topup_wallet or not rpcs:
        return None
    return rpcs[0].wallet(cfg.topup_wallet)


def build_ladder(
    cfg: NodeConfig,
    records: dict[int, EpochRecord],
    magic: bytes,
    rpcs: list[PowRpc],
    coin: Coin,
    qc: QC,
    handover: bool,
    floor: int = 0,
) -> list[PSBT]:
    """The unsigned PSBTs of one checkpoint at `cfg.ladder` ascending fee levels."""
    source = multisig_for(records[coin.epoch])
    dest = multisig_for(records[coin.epoch + 1]) if handover else source
    payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=magic)
    rate = cfg.fees.rate(rpcs[0] if rpcs else None)
    topup = None
    wallet = fee_wallet(cfg, rpcs)
    if wallet is not None and coin.value < cfg.topup_below:
        worst = math.ceil(cfg.fees.max_rate * 1000 * cfg.ladder_factor**cfg.ladder)
        topup = select_topup(wallet, cfg.topup_amount, worst)
        log.info(
            "coin holds %d sat, below %d: topping up %d sat from fee wallet %s",
            coin.value,
            cfg.topup_below,
            cfg.topup_amount,
            cfg.topup_wallet,
        )
    extra = P2WPKH_WITNESS * (len(topup.inputs) if topup else 0)
    vsize = estimate_vsize(build_checkpoint_tx(coin, payload, dest, 1, topup), source, extra)
    fees = fee_ladder(math.ceil(rate * vsize), vsize, cfg.ladder, cfg.ladder_factor, floor)
    return [build_checkpoint_psbt(coin, source, payload, dest, f, topup=topup) for f in fees]
