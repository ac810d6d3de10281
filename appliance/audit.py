"""Walk the checkpoint chain on the PoW chain and check every rule an auditor cares for.

Anyone can run this with only a node, the genesis outpoint and the epoch records:
the coin's lineage, not its amount, makes the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embit.transaction import Transaction

from .checkpoint.descriptor import EpochMultisig
from .checkpoint.epoch import EpochRecord
from .checkpoint.errors import CheckpointError
from .checkpoint.payload import Payload
from .checkpoint.template import Outpoint
from .pow.rpc import PowRpc, RpcError


@dataclass
class AuditedCheckpoint:
    epoch: int
    round: int
    commit_state_id: str
    txid: str
    raw_tx: str
    block_hash: str
    height: int
    handover: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AuditReport:
    checkpoints: list[AuditedCheckpoint] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    coin: str | None = None
    coin_epoch: int | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": self.violations,
            "coin": self.coin,
            "coin_epoch": self.coin_epoch,
            "checkpoints": [c.to_json() for c in self.checkpoints],
        }


def audit_chain(
    rpc: PowRpc,
    genesis: Outpoint,
    records: list[EpochRecord],
    magic: bytes,
    handover_margin: int = 0,
    from_height: int | None = None,
) -> AuditReport:
    report = AuditReport()
    by_epoch = {r.epoch: r for r in records}
    if not by_epoch:
        report.violations.append("no epoch records given")
        return report
    scripts = {e: EpochMultisig(r).script_pubkey.data for e, r in by_epoch.items()}
    coin_epoch = min(by_epoch)
    start = from_height if from_height is not None else _confirmed_height(rpc, genesis, report)
    if start is None:
        return report
    genesis_out = rpc.getrawtransaction(genesis.txid, True)["vout"][genesis.vout]
    if bytes.fromhex(genesis_out["scriptPubKey"]["hex"]) != scripts[coin_epoch]:
        report.violations.append(
            f"genesis {genesis} is not locked by epoch {coin_epoch}'s multisig"
        )
    coin = genesis
    last: tuple[int, int] | None = None
    last_height = -1
    tip = rpc.getblockcount()
    height = start
    broken = False
    while height <= tip and not broken:
        block = rpc.getblock(rpc.getblockhash(height), 2)
        for tx in block["tx"]:
            if not any(
                vin.get("txid") == coin.txid and vin.get("vout") == coin.vout
                for vin in tx.get("vin", [])
            ):
                continue
            raw = tx["hex"]
            where = f"tx {tx['txid']} (height {height})"
            parsed = Transaction.from_string(raw)
            if len(parsed.vout) < 2:
                report.violations.append(f"{where} spends the coin without a coin output")
                broken = True
                break
            try:
                payload = Payload.from_script(parsed.vout[0].script_pubkey.data, magic)
            except CheckpointError as exc:
                report.violations.append(f"{where}: output 0 is not a checkpoint payload: {exc}")
                payload = None
            dest = parsed.vout[1].script_pubkey.data
            handover = False
            if dest == scripts.get(coin_epoch):
                next_epoch = coin_epoch
            elif dest == scripts.get(coin_epoch + 1):
                next_epoch, handover = coin_epoch + 1, True
            else:
                report.violations.append(
                    f"{where} pays the coin to a script that is not epoch {coin_epoch}'s "
                    f"or epoch {coin_epoch + 1}'s multisig"
                )
                broken = True
                next_epoch = coin_epoch
            if len(parsed.vout) > 3:
                report.violations.append(f"{where} has {len(parsed.vout)} outputs (at most 3)")
            if height == last_height:
                report.violations.append(f"{where}: a second checkpoint in block {height}")
            if payload is not None:
                rec = by_epoch[coin_epoch]
                if payload.epoch != coin_epoch:
                    report.violations.append(
                        f"{where}: payload epoch {payload.epoch}, but the coin belongs to "
                        f"epoch {coin_epoch}"
                    )
                if not rec.start_round <= payload.round <= rec.end_round:
                    report.violations.append(
                        f"{where}: round {payload.round} outside epoch {coin_epoch}'s "
                        f"rounds {rec.start_round}..{rec.end_round}"
                    )
                key = (payload.epoch, payload.round)
                if last is not None and key <= last:
                    report.violations.append(
                        f"{where}: epoch {key[0]} round {key[1]} does not increase on "
                        f"epoch {last[0]} round {last[1]}"
                    )
                if handover and payload.round > rec.end_round - handover_margin:
                    report.violations.append(
                        f"{where}: handover at round {payload.round}, after epoch "
                        f"{coin_epoch}'s deadline {rec.end_round - handover_margin}"
                    )
                last = key
                report.checkpoints.append(
                    AuditedCheckpoint(
                        epoch=payload.epoch,
                        round=payload.round,
                        commit_state_id=payload.commit_state_id.hex(),
                        txid=tx["txid"],
                        raw_tx=raw,
                        block_hash=block["hash"],
                        height=height,
                        handover=handover,
                    )
                )
            last_height = height
            coin = Outpoint(tx["txid"], 1)
            coin_epoch = next_epoch
            if broken:
                break
        height += 1
    reached = {c.epoch for c in report.checkpoints}
    for e in sorted(by_epoch):
        if e > coin_epoch:
            break
        if e not in reached:
            report.violations.append(f"epoch {e} has no checkpoint")
    report.coin, report.coin_epoch = str(coin), coin_epoch
    return report


def _confirmed_height(rpc: PowRpc, genesis: Outpoint, report: AuditReport) -> int | None:
    try:
        info = rpc.getrawtransaction(genesis.txid, True)
    except RpcError as exc:
        report.violations.append(
            f"genesis transaction {genesis.txid} not found ({exc}); the node needs "
            "-txindex=1, or pass --from-height"
        )
        return None
    if not info.get("blockhash"):
        report.violations.append(f"genesis transaction {genesis.txid} is not confirmed")
        return None
    return int(rpc.getblockheader(info["blockhash"])["height"])


def format_table(report: AuditReport) -> str:
    lines = [f"{'epoch':>5} {'round':>7} {'height':>7} {'ho':>2}  txid"]
    for c in report.checkpoints:
        lines.append(
            f"{c.epoch:>5} {c.round:>7} {c.height:>7} {'H' if c.handover else '':>2}  {c.txid}"
        )
    lines.append(f"coin: {report.coin} (epoch {report.coin_epoch})")
    if report.ok:
        lines.append(f"audit OK: {len(report.checkpoints)} checkpoint(s), no violations")
    else:
        lines.append(f"audit FAILED: {len(report.violations)} violation(s)")
        lines.extend(f"  - {v}" for v in report.violations)
    return "\n".join(lines)
