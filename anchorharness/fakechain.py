"""An in-memory PoW chain that answers the few RPCs the node's code makes.

For unit tests of the node's round and peer precheck without a PoW node: blocks
hold transactions, the mempool holds what was sent, gettxout reports an outpoint
spent by either. It checks no scripts (the tests check signatures themselves).
"""

from __future__ import annotations

import hashlib
from typing import Any

from embit.transaction import Transaction

from anchornode.pow.rpc import RpcError


class FakeChain:
    def __init__(self) -> None:
        self.blocks: list[dict[str, Any]] = [self._block([], 0)]
        self.mempool: dict[str, str] = {}
        self.where: dict[str, str] = {}  # txid -> block hash
        self.sent: list[str] = []

    def _block(self, txs: list[str], height: int) -> dict[str, Any]:
        parent = self.blocks[-1]["hash"] if height else "00" * 32
        digest = hashlib.sha256((parent + "".join(txs) + str(height)).encode()).hexdigest()
        entries = []
        for raw in txs:
            tx = Transaction.from_string(raw)
            vin = [{"txid": i.txid.hex(), "vout": i.vout} for i in tx.vin]
            entries.append({"txid": tx.txid().hex(), "hex": raw, "vin": vin})
        return {"hash": digest, "height": height, "time": 1_700_000_000 + height, "tx": entries}

    def mine(self, txs: list[str] | None = None) -> str:
        """A block with `txs` (default: the whole mempool); returns its hash."""
        raws = list(self.mempool.values()) if txs is None else txs
        block = self._block(raws, len(self.blocks))
        self.blocks.append(block)
        for t in block["tx"]:
            self.where[t["txid"]] = block["hash"]
            self.mempool.pop(t["txid"], None)
        return block["hash"]

    def _spent(self, txid: str, vout: int) -> bool:
        raws = [t["hex"] for b in self.blocks for t in b["tx"]] + list(self.mempool.values())
        for raw in raws:
            for i in Transaction.from_string(raw).vin:
                if i.txid.hex() == txid and i.vout == vout:
                    return True
        return False

    # --- the RPC surface ------------------------------------------------------------

    def call(self, method: str, *args: Any) -> Any:
        fn = getattr(self, "rpc_" + method, None)
        if fn is None:
            raise RpcError(f"method {method} not found", -32601)
        return fn(*args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name.startswith("rpc_"):
            raise AttributeError(name)
        return lambda *args: self.call(name, *args)

    def rpc_getblockcount(self) -> int:
        return len(self.blocks) - 1

    def rpc_getblockhash(self, height: int) -> str:
        return self.blocks[height]["hash"]

    def rpc_getblock(self, block_hash: str, verbosity: int = 1) -> dict[str, Any]:
        return next(b for b in self.blocks if b["hash"] == block_hash)

    def rpc_getblockheader(self, block_hash: str) -> dict[str, Any]:
        b = self.rpc_getblock(block_hash)
        return {"hash": b["hash"], "height": b["height"], "time": b["time"]}

    def rpc_getrawtransaction(self, txid: str, verbose: bool = False) -> Any:
        for b in self.blocks:
            for t in b["tx"]:
                if t["txid"] == txid:
                    return {"txid": txid, "hex": t["hex"], "blockhash": b["hash"]}
        if txid in self.mempool:
            return {"txid": txid, "hex": self.mempool[txid]}
        raise RpcError("No such mempool or blockchain transaction", -5)

    def rpc_gettxout(self, txid: str, vout: int, include_mempool: bool = True) -> Any:
        return None if self._spent(txid, vout) else {"value": 0}

    def rpc_estimatesmartfee(self, target: int) -> dict[str, Any]:
        return {"errors": ["Insufficient data or no feerate found"], "blocks": target}

    def rpc_sendrawtransaction(self, raw: str) -> str:
        tx = Transaction.from_string(raw)
        txid = tx.txid().hex()
        if txid in self.mempool or txid in self.where:
            raise RpcError("txn-already-known", -27)
        for i in tx.vin:
            if self._spent(i.txid.hex(), i.vout):
                raise RpcError("bad-txns-inputs-missingorspent", -25)
        self.mempool[txid] = raw
        self.sent.append(txid)
        return txid
