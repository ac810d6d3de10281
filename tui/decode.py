"""Turn a held sign request into what an operator must see before approving it.

Pure: no I/O, no signing. It decodes the PSBT and the QC independently of the policy
(each QC signature is checked on its own, each output named) so the screen shows what
the transaction does even when the policy refuses it; the policy's verdict is shown
next to it, never replaced by it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from appliance.api import trusted_records
from bftanchor.bftsig import verify_compact
from bftanchor.coinpath import paid_epoch
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError
from bftanchor.network import network
from bftanchor.payload import Payload
from bftanchor.psbtread import read_psbt
from bftanchor.qc import QC
from bftanchor.template import estimate_vsize

# Only when the policy gave no vsize: a P2WPKH top-up input's worst-case witness, as it sizes.
TOPUP_WITNESS = 108


@dataclass(frozen=True)
class SignerCheck:
    """One QC signature: who signed, and whether it verifies on its own."""

    id: str
    member: bool
    valid: bool


@dataclass(frozen=True)
class OutputView:
    index: int
    value: int
    role: str
    address: str | None = None
    payload: str | None = None


@dataclass
class RequestView:
    """A pending request, decoded, with the policy's current verdict."""

    id: str
    created: float
    epoch: int | None = None
    round: int | None = None
    commit_state_id: str | None = None
    signers: list[SignerCheck] = field(default_factory=list)
    threshold: int | None = None
    n: int | None = None
    inputs: list[tuple[str, int | None]] = field(default_factory=list)
    outputs: list[OutputView] = field(default_factory=list)
    fee: int | None = None
    vsize: int | None = None
    fee_rate: float | None = None
    handover: bool = False
    dest_epoch: int | None = None
    dest_fingerprint: str | None = None  # a handover's new wallet, as the ceremony shows it
    dest_address: str | None = None
    dest_armed: bool | None = None  # the next record installed here (True) or only offered
    txid: str | None = None
    verdict_ok: bool = False
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def valid_signers(self) -> int:
        return sum(1 for s in self.signers if s.member and s.valid)


def coin_unit(chain: str) -> str:
    return "LTC" if chain.startswith("litecoin") else "BTC"


def fmt_amount(sat: int | None, chain: str) -> str:
    if sat is None:
        return "?"
    return f"{sat:,} sat ({sat / 1e8:.8f} {coin_unit(chain)})"


def wallet_fingerprint(multisig: EpochMultisig) -> str:
    """The short value operators compare out of band: SHA256(descriptor), 8 hex, grouped."""
    digest = hashlib.sha256(multisig.descriptor().encode()).hexdigest()[:8].upper()
    return f"{digest[:4]} {digest[4:]}"


def same_fingerprint(typed: str, expected: str) -> bool:
    def norm(s: str) -> str:
        return "".join(s.split()).replace("-", "").upper()

    return bool(norm(typed)) and norm(typed) == norm(expected)


def _script_label(record: EpochRecord) -> str:
    """A tapscript epoch's coin is named as such (wsh stays the unmarked default)."""
    if not record.is_taproot:
        return ""
    return f", tapscript {record.threshold}-of-{record.n}"


def decode_request(
    item: dict[str, Any],
    held: dict[int, EpochRecord],
    chain: str,
    magic: bytes,
) -> RequestView:
    """Decode one entry of the control socket's full pending list (or its in-process twin)."""
    verdict = item.get("verdict") or {}
    summary: dict[str, Any] = dict(verdict.get("summary") or item.get("summary") or {})
    view = RequestView(
        id=str(item.get("id")),
        created=float(item.get("created") or 0.0),
        verdict_ok=bool(verdict.get("ok")),
        reasons=list(verdict.get("reasons") or []),
        handover=bool(summary.get("handover", False)),
        dest_epoch=summary.get("dest_epoch"),
        txid=summary.get("txid"),
        fee=summary.get("fee"),
        vsize=summary.get("vsize"),
        fee_rate=summary.get("fee_rate"),
    )
    if "verdict" not in item:
        view.problems.append("this appliance does not send requests in full; showing its summary")
        view.epoch, view.round = summary.get("epoch"), summary.get("round")
        view.commit_state_id = summary.get("commit_state_id")
        return view
    offered: list[EpochRecord] = []
    for r in item.get("records") or []:
        try:
            offered.append(EpochRecord.from_json(r))
        except CheckpointError as exc:
            view.problems.append(f"an offered epoch record does not parse: {exc}")
    records, _ = trusted_records(held, offered)
    net = network(chain)

    qc: QC | None = None
    try:
        qc = QC.from_json(item.get("qc"))
    except CheckpointError as exc:
        view.problems.append(f"QC does not parse: {exc}")
    if qc is not None:
        view.epoch, view.round = qc.epoch, qc.round
        view.commit_state_id = qc.commit_state_id.hex()
        record = records.get(qc.epoch)
        members = {v.id: v for v in record.validators} if record else {}
        if record is not None:
            view.threshold, view.n = record.threshold, record.n
        digest = qc.signed_digest()
        for vid, sig in qc.signatures:
            member = vid in members
            valid = False
            if member:
                try:
                    verify_compact(members[vid].bft_pubkey, digest, sig)
                    valid = True
                except Exception:  # any failure is shown as a bad signature
                    valid = False
            view.signers.append(SignerCheck(vid, member, valid))
        if qc.vote_info.hash() != qc.vote_info_hash:
            view.problems.append("vote_info_hash does not match vote_info")

    try:
        psbt = read_psbt(str(item.get("psbt")))
    except Exception as exc:  # a malformed PSBT is shown, not raised
        view.problems.append(f"PSBT does not parse: {exc or type(exc).__name__}")
        return view
    tx = psbt.tx
    view.txid = tx.txid().hex()
    total_in: int | None = 0
    for i, txin in enumerate(tx.vin):
        utxo = psbt.inputs[i].witness_utxo
        value = utxo.value if utxo is not None else None
        view.inputs.append((f"{txin.txid.hex()}:{txin.vout}", value))
        total_in = None if value is None or total_in is None else total_in + value

    source = EpochMultisig(records[qc.epoch]) if qc and qc.epoch in records else None
    for i, out in enumerate(tx.vout):
        spk = out.script_pubkey
        if spk.data[:1] == b"\x6a":
            try:
                p = Payload.from_script(spk.data, magic=None)
                text = (
                    f"magic {p.magic.decode(errors='replace')} v{p.version} epoch {p.epoch} "
                    f"round {p.round}\n        commit {p.commit_state_id.hex()}"
                )
                if qc is not None and (p.epoch, p.round, p.commit_state_id, p.magic) != (
                    qc.epoch,
                    qc.round,
                    qc.commit_state_id,
                    magic,
                ):
                    text += "  (NOT this QC's payload)"
            except CheckpointError as exc:
                text = f"not a checkpoint payload: {exc}"
            view.outputs.append(OutputView(i, out.value, "OP_RETURN payload", payload=text))
            continue
        try:
            address = spk.address(net)
        except Exception:
            address = None
        paid = paid_epoch(spk, qc.epoch, records) if qc is not None else None
        if paid is not None and paid == qc.epoch:
            role = f"coin -> epoch {paid} multisig{_script_label(records[paid])}"
        elif paid is not None:
            role = f"coin -> epoch {paid} multisig{_script_label(records[paid])} (HANDOVER)"
            view.handover = True
            view.dest_epoch = paid
            view.dest_fingerprint = wallet_fingerprint(EpochMultisig(records[paid]))
            view.dest_address = address
            view.dest_armed = paid in held
        elif i == 1:
            role = "coin -> a script of no epoch held (!)"
        else:
            role = "top-up change" if i == 2 else "unexpected output (!)"
        view.outputs.append(OutputView(i, out.value, role, address=address))

    if total_in is not None:
        view.fee = total_in - sum(o.value for o in tx.vout)
        if view.vsize is None and source is not None:
            view.vsize = estimate_vsize(tx, source, TOPUP_WITNESS * (len(tx.vin) - 1))
        if view.vsize:
            view.fee_rate = round(view.fee / view.vsize, 3)
    return view
