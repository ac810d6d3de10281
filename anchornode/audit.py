"""Walk the checkpoint chain on the PoW chain and check every rule an auditor cares for.

Anyone can run this with only a node, the genesis outpoint and the epoch records:
the coin's lineage, not its amount, makes the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anchornode.pow.follow import CoinFollower
from anchornode.pow.rpc import PowRpc, RpcError
from bftanchor.descriptor import multisig_for
from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.template import Outpoint


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
    window: int,
    from_height: int | None = None,
) -> AuditReport:
    report = AuditReport()
    by_epoch = {r.epoch: r for r in records}
    if not by_epoch:
        report.violations.append("no epoch records given")
        return report
    scripts = {e: multisig_for(r).script_pubkey.data for e, r in by_epoch.items()}
    coin_epoch = min(by_epoch)
    start = from_height if from_height is not None else _confirmed_height(rpc, genesis, report)
    if start is None:
        return report
    genesis_out = rpc.getrawtransaction(genesis.txid, True)["vout"][genesis.vout]
    if bytes.fromhex(genesis_out["scriptPubKey"]["hex"]) != scripts[coin_epoch]:
        report.violations.append(
            f"genesis {genesis} is not locked by epoch {coin_epoch}'s multisig"
        )
    follower = CoinFollower(rpc, genesis, start)
    last: tuple[int, int] | None = None
    last_height = -1
    for spend in follower.poll():
        tx, where = spend.tx, f"tx {spend.txid} (height {spend.height})"
        if len(tx.vout) < 2:
            report.violations.append(f"{where} spends the coin without a coin output")
            break
        try:
            payload = Payload.from_script(tx.vout[0].script_pubkey.data, magic)
        except CheckpointError as exc:
            report.violations.append(f"{where}: output 0 is not a checkpoint payload: {exc}")
            payload = None
        dest = tx.vout[1].script_pubkey.data
        handover = False
        next_epoch = coin_epoch
        if dest == scripts.get(coin_epoch + 1):
            next_epoch, handover = coin_epoch + 1, True
        elif dest != scripts.get(coin_epoch):
            report.violations.append(
                f"{where} pays the coin to a script that is not epoch {coin_epoch}'s "
                f"or epoch {coin_epoch + 1}'s multisig"
            )
            break
        if len(tx.vout) > 3:
            report.violations.append(f"{where} has {len(tx.vout)} outputs (at most 3)")
        if spend.height == last_height:
            report.violations.append(f"{where}: a second checkpoint in block {spend.height}")
        last_height = spend.height
        if payload is not None:
            last = _check_payload(
                report, where, payload, by_epoch[coin_epoch], last, handover, window
            )
            report.checkpoints.append(
                AuditedCheckpoint(
                    epoch=payload.epoch,
                    round=payload.round,
                    commit_state_id=payload.commit_state_id.hex(),
                    txid=spend.txid,
                    raw_tx=spend.raw,
                    block_hash=spend.block_hash,
                    height=spend.height,
                    handover=handover,
                )
            )
        coin_epoch = next_epoch
    coin = follower.outpoint
    reached = {c.epoch for c in report.checkpoints}
    for e in sorted(by_epoch):
        if e >= coin_epoch:
            break  # the epoch that holds the coin now may not have one yet
        if e not in reached:
            report.violations.append(f"epoch {e} has no checkpoint")
    report.coin, report.coin_epoch = str(coin), coin_epoch
    return report


def _check_payload(
    report: AuditReport,
    where: str,
    payload: Payload,
    rec: EpochRecord,
    last: tuple[int, int] | None,
    handover: bool,
    window: int,
) -> tuple[int, int]:
    if payload.epoch != rec.epoch:
        report.violations.append(
            f"{where}: payload epoch {payload.epoch}, but the coin belongs to epoch {rec.epoch}"
        )
    if not rec.start_round <= payload.round <= rec.end_round:
        report.violations.append(
            f"{where}: round {payload.round} outside epoch {rec.epoch}'s rounds "
            f"{rec.start_round}..{rec.end_round}"
        )
    key = (payload.epoch, payload.round)
    if last is not None and key <= last:
        report.violations.append(
            f"{where}: epoch {key[0]} round {key[1]} does not increase on "
            f"epoch {last[0]} round {last[1]}"
        )
    first = rec.end_round - window + 1
    inside = first <= payload.round <= rec.end_round
    if handover and not inside:
        report.violations.append(
            f"{where}: handover at round {payload.round}, outside epoch {rec.epoch}'s "
            f"handover window {first}..{rec.end_round}"
        )
    if not handover and inside:
        report.violations.append(
            f"{where}: a regular checkpoint at round {payload.round}, inside epoch "
            f"{rec.epoch}'s handover window {first}..{rec.end_round}"
        )
    return key


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
