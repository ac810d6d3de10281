"""What one node sees: the coin on the PoW chain and the certified epoch records.

The view follows the coin's spends on the first PoW node that answers, keeps the
records the QC source offers once each is certified by its predecessor, and
derives the schedule's ChainState from both. Everything that changes it runs
under `lock`, shared with the peer responder.

Every checkpoint it sees confirmed goes into the node's CheckpointStore, so when a
reorganisation takes checkpoints out of the chain and the mempools, the view can
hand them to the PoW nodes again (`restore_dropped`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from embit.transaction import Transaction

from anchornode.delivery import CheckpointFailed, deliver
from anchornode.metrics import Metrics
from anchornode.pow.follow import CoinFollower, Spend, confirmed_height
from anchornode.pow.rpc import PowRpc, RpcError, first_answer, to_sat
from anchornode.qcsource import QCSource
from anchornode.schedule import ChainState
from anchornode.store import CheckpointStore
from appliance.lineage import quorum_signers
from bftanchor.coinpath import paid_epoch
from bftanchor.deployment import Deployment
from bftanchor.descriptor import multisig_for
from bftanchor.epoch import EpochRecord, verify_certificate
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.template import Coin, Outpoint

log = logging.getLogger("bft_anchor.node")


class ChainView:
    def __init__(
        self,
        deployment: Deployment,
        rpcs: list[PowRpc],
        source: QCSource,
        metrics: Metrics,
        store: CheckpointStore | None = None,
    ) -> None:
        self.deployment = deployment
        self.store = store if store is not None else CheckpointStore()
        self.rpcs = rpcs
        self.source = source
        self.metrics = metrics
        self.records: dict[int, EpochRecord] = {deployment.epoch0.epoch: deployment.epoch0}
        self.lock = threading.RLock()
        self.follower: CoinFollower | None = None
        self.coin = deployment.genesis
        self.epochs_with_checkpoint: set[int] = set()
        self.last_checkpoint: tuple[int, float] | None = None
        self.last_round: tuple[int, int] | None = None
        # Called with the outpoint a confirmed checkpoint spent (the ladder store forgets it).
        self.on_spent: list[Callable[[Outpoint], None]] = []
        # When this node first saw each checkpoint seq become the next one (wall clock).
        self.seq_seen: dict[int, float] = {}
        self.genesis_time: float | None = None  # the genesis coin's block time

    # --- reading the PoW nodes ---------------------------------------------------------

    def read(self, method: str, *args: Any) -> Any:
        """A read from the first PoW node that is available (down, 401, 503: the next)."""
        return first_answer(self.rpcs, method, *args)

    def reader(self) -> PowRpc:
        errors = []
        for rpc in self.rpcs:
            try:
                rpc.getblockcount()
                return rpc
            except RpcError as exc:
                errors.append(str(exc))
        raise RpcError("no PoW node answered: " + "; ".join(errors), unavailable=True)

    def tip(self) -> int:
        return int(self.read("getblockcount"))

    def topup_prevouts(self, tx: Any) -> dict[Outpoint, Any]:
        """The outputs a checkpoint's top-up inputs spend, while unspent (gettxout, mempool
        included): a tapscript signature commits to them (BIP341), so checking one needs
        them. What the node cannot find is left out (the signatures then do not verify)."""
        from embit.script import Script
        from embit.transaction import TransactionOutput

        out: dict[Outpoint, Any] = {}
        for txin in tx.vin[1:]:
            op = Outpoint(txin.txid.hex(), txin.vout)
            try:
                got = self.read("gettxout", op.txid, op.vout, True)
            except RpcError:
                continue
            if got:
                value = to_sat(got["value"])
                spk = Script(bytes.fromhex(got["scriptPubKey"]["hex"]))
                out[op] = TransactionOutput(value, spk)
        return out

    # --- the coin ----------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """How many checkpoints have confirmed: the sequence number of the next one."""
        return len(self.follower.spends) if self.follower else 0

    @property
    def spends(self) -> list[Spend]:
        return list(self.follower.spends) if self.follower else []

    def poll(self) -> None:
        """Catch up with the PoW chain (rebuilding the view after a reorganisation)."""
        rpc = self.reader()
        if self.follower is None or self.follower.rpc is not rpc:
            start = confirmed_height(rpc, self.deployment.genesis.outpoint.txid)
            if start is None:
                return
            self.follower = CoinFollower(rpc, self.deployment.genesis.outpoint, start)
            self.genesis_time = float(rpc.getblockheader(rpc.getblockhash(start))["time"])
            self._forget()
        before = len(self.follower.spends)
        new = self.follower.poll()
        if len(self.follower.spends) < before + len(new):  # reorganised: rebuild the view
            self._forget()
            new = list(self.follower.spends)
        for spend in new:
            self._on_confirmed(spend)
        self.seq_seen.setdefault(self.seq, time.time())

    def _forget(self) -> None:
        self.coin = self.deployment.genesis
        self.epochs_with_checkpoint.clear()
        self.last_checkpoint = None
        self.last_round = None

    def _on_confirmed(self, spend: Spend) -> None:
        coin = self.coin
        ms = multisig_for(self.records[coin.epoch])
        paid = paid_epoch(spend.tx.vout[1].script_pubkey, coin.epoch, self.records)
        dest_epoch = coin.epoch if paid is None else paid
        try:
            payload = Payload.from_script(
                spend.tx.vout[0].script_pubkey.data, self.deployment.magic
            )
            self.epochs_with_checkpoint.add(payload.epoch)
            self.last_round = (payload.epoch, payload.round)
            what = f"epoch {payload.epoch} round {payload.round}"
        except CheckpointError:
            what = "unreadable payload"
        key_ids = {k.pubkey: k.validator_id for k in ms.keys}
        signers = [key_ids[p] for p in quorum_signers(spend.tx, coin, ms)]
        self.store.add(spend.raw, spend.height)
        self.coin = Coin(Outpoint(spend.txid, 1), spend.tx.vout[1].value, dest_epoch)
        self.last_checkpoint = (spend.height, float(spend.block_time))
        self.metrics.confirmed(spend.height, time.time(), spend.txid, signers)
        for hook in self.on_spent:
            hook(spend.spent)
        log.info(
            "confirmed: %s txid %s at height %d, signed by %s%s",
            what,
            spend.txid,
            spend.height,
            ",".join(signers),
            f" (handover to epoch {dest_epoch})" if dest_epoch != coin.epoch else "",
        )

    def coin_spent_in_mempool(self) -> bool:
        op = self.coin.outpoint
        try:
            return self.read("gettxout", op.txid, op.vout, True) is None
        except RpcError:
            return False

    @property
    def coin_time(self) -> float | None:
        """The block time of the block that confirmed the coin (every node reads the same)."""
        return self.last_checkpoint[1] if self.last_checkpoint else self.genesis_time

    def restore_dropped(self) -> str | None:
        """Send again a known checkpoint that spends the coin when neither the chain nor
        a mempool has one (a reorganisation dropped it); its txid, or None."""
        for raw in self.store.children(self.coin.outpoint):
            tx = Transaction.from_string(raw)
            try:
                deliver(tx, self.rpcs)
            except CheckpointFailed as exc:
                log.info("known checkpoint %s not accepted again: %s", tx.txid().hex(), exc)
                continue
            self.metrics.inc("rebroadcasts")
            log.warning(
                "checkpoint %s was dropped from the chain (reorganisation): sent it again",
                tx.txid().hex(),
            )
            return tx.txid().hex()
        return None

    def chain_state(self, tip: int) -> ChainState:
        """What the schedule needs to know about the chain (the coin is confirmed)."""
        last_h = self.last_checkpoint[0] if self.last_checkpoint else None
        last_t = self.last_checkpoint[1] if self.last_checkpoint else None
        return ChainState(
            tip,
            self.coin.epoch,
            True,
            last_h,
            last_t,
            self.coin.epoch in self.epochs_with_checkpoint,
            self.last_round,  # nothing at or below the last anchored (epoch, round) is due
        )

    # --- the epoch records -------------------------------------------------------------

    def refresh_records(self) -> None:
        """Hold every record the QC source offers that its predecessor certifies."""
        try:
            offered = sorted(self.source.records(), key=lambda r: r.epoch)
        except Exception as exc:  # the BFT node being down must not stop the loop
            log.warning("cannot read epoch records from the QC source: %s", exc)
            return
        for r in offered:
            if r.epoch in self.records or r.epoch - 1 not in self.records:
                continue
            try:
                verify_certificate(r, self.records[r.epoch - 1])
            except CheckpointError as exc:
                log.warning("epoch %d record from the QC source is not certified: %s", r.epoch, exc)
                continue
            with self.lock:
                self.records[r.epoch] = r
            log.info("holding certified record for epoch %d", r.epoch)

    # --- status ------------------------------------------------------------------------

    def status(self, me: str) -> dict[str, Any]:
        """The node's /status document."""
        with self.lock:
            return {
                "validator": me,
                "coin": str(self.coin.outpoint),
                "coin_epoch": self.coin.epoch,
                "coin_value": self.coin.value,
                "checkpoints": self.seq,
                "last_checkpoint_height": self.last_checkpoint[0] if self.last_checkpoint else None,
                "epochs_held": sorted(self.records),
            }
