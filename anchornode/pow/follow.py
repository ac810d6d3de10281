"""Follow the checkpoint coin through the PoW chain, block by block.

The coin's lineage is the chain of spends of output 1 from the genesis outpoint.
Both the auditor and the node follow it; the follower scans only new blocks and
starts over from its first block when the chain it saw was reorganised.
"""

from __future__ import annotations

from dataclasses import dataclass

from embit.transaction import Transaction

from anchornode.pow.rpc import PowRpc
from bftanchor.template import Outpoint

COIN_VOUT = 1


@dataclass(frozen=True)
class Spend:
    txid: str
    raw: str
    tx: Transaction
    height: int
    block_hash: str
    block_time: int
    spent: Outpoint


class CoinFollower:
    def __init__(self, rpc: PowRpc, genesis: Outpoint, start_height: int) -> None:
        self.rpc = rpc
        self.genesis = genesis
        self.start_height = start_height
        self.reset()

    def reset(self) -> None:
        self.outpoint: Outpoint | None = self.genesis
        self.next_height = self.start_height
        self.spends: list[Spend] = []
        self._hashes: dict[int, str] = {}

    def _reorged(self) -> bool:
        last = self.next_height - 1
        if last not in self._hashes:
            return False
        return self.rpc.getblockhash(last) != self._hashes[last]

    def poll(self) -> list[Spend]:
        """Scan blocks not seen yet; return the new spends of the coin, in chain order.

        After a reorganisation everything is rescanned and `spends` is rebuilt; the
        return value is then every spend found again.
        """
        if self._reorged():
            self.reset()
        new: list[Spend] = []
        tip = self.rpc.getblockcount()
        while self.next_height <= tip and self.outpoint is not None:
            h = self.next_height
            block = self.rpc.getblock(self.rpc.getblockhash(h), 2)
            for txj in block["tx"]:
                op = self.outpoint
                if op is None:
                    break
                if not any(
                    v.get("txid") == op.txid and v.get("vout") == op.vout
                    for v in txj.get("vin", [])
                ):
                    continue
                tx = Transaction.from_string(txj["hex"])
                spend = Spend(
                    txj["txid"], txj["hex"], tx, h, block["hash"], int(block.get("time", 0)), op
                )
                new.append(spend)
                self.spends.append(spend)
                self.outpoint = (
                    Outpoint(txj["txid"], COIN_VOUT) if len(tx.vout) > COIN_VOUT else None
                )
            self._hashes[h] = block["hash"]
            self.next_height = h + 1
        return new


def confirmed_height(rpc: PowRpc, txid: str) -> int | None:
    """Height of the block holding txid (needs -txindex or a wallet tx), None if unconfirmed."""
    info = rpc.getrawtransaction(txid, True)
    if not info.get("blockhash"):
        return None
    return int(rpc.getblockheader(info["blockhash"])["height"])
