"""Walk the checkpoint chain on the PoW chain and check every rule an auditor cares for.

Anyone can run this with a node, the deployment file and the epochs file. Nothing in
the epochs file is trusted as given: epoch 0 comes from the deployment file, and every
later record counts only once its certificate verifies back to epoch 0 (an epochs file
could otherwise rewrite who may move the coin). The rules are docs/protocol.md's
"The audit's rules".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embit.transaction import Transaction

from anchornode.pow.follow import CoinFollower
from anchornode.pow.rpc import PowRpc, RpcError, redact, to_sat
from bftanchor.coinpath import paid_epoch
from bftanchor.deployment import Deployment, DeploymentError, check_window
from bftanchor.descriptor import multisig_for
from bftanchor.epoch import EpochRecord, verify_certificate
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.template import (
    COIN_SEQUENCE,
    LOCKTIME,
    TOPUP_SEQUENCE,
    TX_VERSION,
    Outpoint,
)


class AuditInputError(Exception):
    """The audit could not run: a node or an input it needs is unusable (exit 2)."""


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
    # What the audit needed and was not given (e.g. the record of the epoch the coin was
    # handed to): the chain beyond it is not judged, so the audit cannot pass.
    missing: list[str] = field(default_factory=list)
    records: dict[int, str] = field(default_factory=dict)  # epoch -> "trusted"/"verified"/...
    coin: str | None = None
    coin_epoch: int | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and not self.missing

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": self.violations,
            "missing": self.missing,
            "records": {str(e): s for e, s in sorted(self.records.items())},
            "coin": self.coin,
            "coin_epoch": self.coin_epoch,
            "checkpoints": [c.to_json() for c in self.checkpoints],
        }


def verify_records(
    deployment: Deployment, records: list[EpochRecord], report: AuditReport
) -> dict[int, EpochRecord]:
    """The records that verify back to the deployment's epoch 0; the rest are reported."""
    trusted = deployment.epoch0
    given: dict[int, EpochRecord] = {}
    for r in records:
        if r.epoch in given and given[r.epoch].to_json() != r.to_json():
            report.records[r.epoch] = "refused: the epochs file holds two different records"
        given.setdefault(r.epoch, r)
    for epoch, status in report.records.items():
        report.violations.append(f"epoch {epoch}'s record is {status}")
    verified = {trusted.epoch: trusted}
    report.records[trusted.epoch] = "trusted (deployment file)"
    if trusted.epoch in given and given[trusted.epoch].body_json() != trusted.body_json():
        report.violations.append(
            f"the epochs file's record for epoch {trusted.epoch} differs from the deployment "
            "file's (the deployment's is used)"
        )
    e = trusted.epoch + 1
    while e in given and not report.records.get(e, "").startswith("refused"):
        record = given[e]
        try:
            verify_certificate(record, verified[e - 1])
            check_window(deployment.handover_window, record)
        except (CheckpointError, DeploymentError) as exc:
            report.violations.append(f"epoch {e}'s record is refused: {exc}")
            report.records[e] = f"refused: {exc}"
            break
        verified[e] = record
        report.records[e] = f"verified (certified by epoch {e - 1}'s quorum)"
        e += 1
    for epoch in sorted(given):
        if epoch not in report.records:
            report.records[epoch] = (
                "ignored: before the deployment's epoch 0" if epoch < trusted.epoch
                else f"not verified: epoch {e}'s record is refused or missing"
            )
    return verified


def audit_chain(
    rpc: PowRpc,
    deployment: Deployment,
    records: list[EpochRecord],
    from_height: int | None = None,
) -> AuditReport:
    """Audit the chain of spends of the deployment's genesis coin.

    Raises AuditInputError when the node cannot be used (unreachable, credentials
    refused, another chain, no -txindex); every finding about the chain is in the report.
    """
    report = AuditReport()
    verified = verify_records(deployment, records, report)
    scripts: dict[int, bytes] = {}
    for epoch, record in sorted(verified.items()):
        try:
            scripts[epoch] = multisig_for(record).script_pubkey.data
        except CheckpointError as exc:
            report.violations.append(f"epoch {epoch}'s multisig cannot be built: {exc}")
            del verified[epoch]
            break
    check_node(rpc, deployment)
    genesis = deployment.genesis
    if from_height is None:
        start = confirmed_height(rpc, genesis.outpoint)
        if start is None:
            report.missing.append(
                f"the genesis transaction {genesis.outpoint.txid} is not confirmed"
            )
            return report
        genesis_tx = _transaction(rpc, genesis.outpoint.txid)
    else:
        start, genesis_tx = from_height, _in_block(rpc, genesis.outpoint.txid, from_height)
    _check_genesis(genesis_tx, deployment, scripts, report)

    window = deployment.handover_window
    coin_epoch = genesis.epoch
    last: tuple[int, int] | None = None
    last_height = -1
    follower = CoinFollower(rpc, genesis.outpoint, start)
    for spend in _poll(follower, rpc):
        tx, where = spend.tx, f"tx {spend.txid} (height {spend.height})"
        if len(tx.vout) < 2:
            report.violations.append(f"{where} spends the coin without a coin output")
            break
        _check_shape(rpc, tx, spend.spent, where, report)
        paid = paid_epoch(tx.vout[1].script_pubkey, coin_epoch, verified)
        if paid is not None:
            handover = paid != coin_epoch
        elif coin_epoch + 1 not in verified:
            status = report.records.get(coin_epoch + 1)
            if status is None:
                report.missing.append(
                    f"{where} pays the coin to a script that is not epoch {coin_epoch}'s "
                    f"multisig, and the epochs file has no record for epoch {coin_epoch + 1}: "
                    f"give epoch {coin_epoch + 1}'s certified record to judge it (a handover?)"
                )
            else:
                report.violations.append(
                    f"{where} pays the coin to a script that is not epoch {coin_epoch}'s "
                    f"multisig; epoch {coin_epoch + 1}'s record is {status}"
                )
            break
        else:
            report.violations.append(
                f"{where} pays the coin to a script that is not epoch {coin_epoch}'s "
                f"or epoch {coin_epoch + 1}'s multisig"
            )
            break
        if spend.height == last_height:
            report.violations.append(f"{where}: a second checkpoint in block {spend.height}")
        last_height = spend.height
        try:
            payload = Payload.from_script(tx.vout[0].script_pubkey.data, deployment.magic)
        except CheckpointError as exc:
            report.violations.append(f"{where}: output 0 is not a checkpoint payload: {exc}")
            payload = None
        if payload is not None:
            last = _check_payload(
                report, where, payload, verified[coin_epoch], last, handover, window
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
        coin_epoch = coin_epoch + 1 if handover else coin_epoch
    # "At least one per epoch" holds for the epochs the coin has left; the epoch that
    # holds the coin now may not have one yet (e.g. right after a handover).
    reached = {c.epoch for c in report.checkpoints}
    for e in range(genesis.epoch, coin_epoch):
        if e not in reached:
            report.violations.append(f"epoch {e} has no checkpoint")
    report.coin, report.coin_epoch = str(follower.outpoint), coin_epoch
    return report


def _about(node: str, exc: Exception) -> str:
    """One line naming the node, once."""
    return str(exc) if node in str(exc) else f"node {node}: {exc}"


def _poll(follower: CoinFollower, rpc: PowRpc) -> list[Any]:
    try:
        return follower.poll()
    except RpcError as exc:
        raise AuditInputError(_about(redact(rpc.url), exc)) from exc


def _check_shape(
    rpc: PowRpc, tx: Transaction, coin: Outpoint, where: str, report: AuditReport
) -> None:
    """The checkpoint transaction's fixed shape (docs/protocol.md)."""
    v = report.violations
    if tx.version != TX_VERSION:
        v.append(f"{where}: nVersion is {tx.version}, expected {TX_VERSION}")
    if tx.locktime != LOCKTIME:
        v.append(f"{where}: nLockTime is {tx.locktime}, expected {LOCKTIME}")
    first = Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout)
    if first != coin:
        v.append(f"{where}: input 0 is {first}, not the coin {coin}")
    for i, txin in enumerate(tx.vin):
        expected = COIN_SEQUENCE if i == 0 else TOPUP_SEQUENCE
        if txin.sequence != expected:
            v.append(f"{where}: input {i} nSequence is {txin.sequence:#x}, expected {expected:#x}")
    if len(tx.vout) > 3:
        v.append(f"{where} has {len(tx.vout)} outputs (at most 3)")
    if tx.vout[0].value != 0:
        v.append(f"{where}: output 0 (the payload) carries {tx.vout[0].value} sat, expected 0")
    if len(tx.vout) >= 3:
        if len(tx.vin) == 1:
            v.append(f"{where}: output 2 pays {tx.vout[2].value} sat out of the coin with no "
                     "top-up input (the coin's value leaks)")
        else:
            brought = sum(_prevout_value(rpc, txin) for txin in tx.vin[1:])
            if tx.vout[2].value > brought:
                v.append(f"{where}: top-up change {tx.vout[2].value} sat exceeds what the "
                         f"top-ups brought ({brought} sat): the coin's value leaks")


def _prevout_value(rpc: PowRpc, txin: Any) -> int:
    txid = txin.txid.hex()
    try:
        out = rpc.getrawtransaction(txid, True)["vout"][txin.vout]
    except RpcError as exc:
        raise AuditInputError(
            f"node {redact(rpc.url)} does not find top-up input {txid}:{txin.vout} ({exc}); "
            "it needs -txindex=1"
        ) from exc
    return to_sat(out["value"])


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
        when = "early" if payload.round < first else "late"
        report.violations.append(
            f"{where}: {when} handover at round {payload.round}, outside epoch {rec.epoch}'s "
            f"handover window {first}..{rec.end_round}"
        )
    if not handover and inside:
        report.violations.append(
            f"{where}: a regular checkpoint at round {payload.round}, inside epoch "
            f"{rec.epoch}'s handover window {first}..{rec.end_round}"
        )
    return key


NETWORKS = {"main": "main", "test": "test", "regtest": "regtest", "signet": "signet"}


def check_node(rpc: PowRpc, deployment: Deployment) -> None:
    """The node answers, takes the credentials and is on the deployment's chain."""
    node = redact(rpc.url)
    try:
        info = rpc.getblockchaininfo()
    except RpcError as exc:
        text = str(exc)
        if "401" in text or "403" in text:
            raise AuditInputError(f"node {node} refused the RPC credentials ({exc})") from exc
        raise AuditInputError(_about(node, exc)) from exc
    family, _, net = deployment.chain.rpartition("-")
    if info.get("chain") != NETWORKS.get(net, net):
        raise AuditInputError(
            f"node {node} is on chain {info.get('chain')!r}, the deployment is for "
            f"{deployment.chain}"
        )
    try:
        agent = str(rpc.getnetworkinfo().get("subversion", "")).lower()
    except RpcError:
        return
    if (family == "litecoin" and "satoshi" in agent) or (
        family == "bitcoin" and "litecoin" in agent
    ):
        raise AuditInputError(
            f"node {node} runs {agent.strip('/')}, the deployment is for {deployment.chain}"
        )


def confirmed_height(rpc: PowRpc, genesis: Outpoint) -> int | None:
    """The genesis transaction's block height (None while unconfirmed)."""
    try:
        info = rpc.getrawtransaction(genesis.txid, True)
    except RpcError as exc:
        raise AuditInputError(
            f"node {redact(rpc.url)} does not find the genesis transaction {genesis.txid} "
            f"({exc}); it needs -txindex=1, or pass --from-height"
        ) from exc
    if not info.get("blockhash"):
        return None
    return int(rpc.getblockheader(info["blockhash"])["height"])


def _transaction(rpc: PowRpc, txid: str) -> dict[str, Any]:
    try:
        return rpc.getrawtransaction(txid, True)
    except RpcError as exc:
        raise AuditInputError(_about(redact(rpc.url), exc)) from exc


def _in_block(rpc: PowRpc, txid: str, height: int) -> dict[str, Any]:
    """The genesis transaction from the block at --from-height (no -txindex needed): the
    walk starts there, so a later height would miss checkpoints and is refused."""
    try:
        block = rpc.getblock(rpc.getblockhash(height), 2)
    except RpcError as exc:
        raise AuditInputError(f"node {redact(rpc.url)}: --from-height {height}: {exc}") from exc
    for tx in block["tx"]:
        if tx.get("txid") == txid:
            return tx
    raise AuditInputError(
        f"--from-height {height}: the genesis transaction {txid} is not in that block "
        "(give the height of the block that confirmed it)"
    )


def _check_genesis(
    tx: dict[str, Any], deployment: Deployment, scripts: dict[int, bytes], report: AuditReport
) -> None:
    genesis = deployment.genesis
    vout = tx.get("vout", [])
    if genesis.outpoint.vout >= len(vout):
        report.violations.append(
            f"genesis {genesis.outpoint}: the transaction has only {len(vout)} output(s)"
        )
        return
    out = vout[genesis.outpoint.vout]
    if bytes.fromhex(out["scriptPubKey"]["hex"]) != scripts.get(genesis.epoch):
        report.violations.append(
            f"genesis {genesis.outpoint} is not locked by epoch {genesis.epoch}'s multisig"
        )
    if to_sat(out["value"]) != genesis.value:
        report.violations.append(
            f"genesis {genesis.outpoint} holds {to_sat(out['value'])} sat, the deployment "
            f"says {genesis.value}"
        )


def format_table(report: AuditReport) -> str:
    lines = [f"{'epoch':>5} {'round':>7} {'height':>7} {'ho':>2}  txid"]
    for c in report.checkpoints:
        lines.append(
            f"{c.epoch:>5} {c.round:>7} {c.height:>7} {'H' if c.handover else '':>2}  {c.txid}"
        )
    lines.append(f"coin: {report.coin} (epoch {report.coin_epoch})")
    lines.extend(f"epoch {e} record: {s}" for e, s in sorted(report.records.items()))
    if report.ok:
        lines.append(f"audit OK: {len(report.checkpoints)} checkpoint(s), no violations")
    else:
        if report.violations:
            lines.append(f"audit FAILED: {len(report.violations)} violation(s)")
            lines.extend(f"  - {v}" for v in report.violations)
        if report.missing:
            lines.append(f"audit INCOMPLETE: {len(report.missing)} input(s) missing")
            lines.extend(f"  - {m}" for m in report.missing)
    return "\n".join(lines)
