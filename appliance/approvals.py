"""The operator's queue: sign requests held until a person approves or refuses them.

A request the policy refuses never enters the queue: it cannot be approved. An
approved request is signed at once, so the node's next ask is answered from the
journal.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from appliance.signing import Appliance, request_hash
from bftanchor.signreply import SignReply


@dataclass
class PendingRequest:
    id: str
    created: float
    psbt: str
    qc: Any
    records: Any
    lineage: list[str] | None
    summary: dict[str, Any]
    state: str = "pending"  # pending | approved | refused
    outcome: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "state": self.state,
            "summary": self.summary,
            "outcome": self.outcome,
        }


@dataclass
class ApprovalQueue:
    appliance: Appliance
    mode: str = "auto"
    items: dict[str, PendingRequest] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        # The operator's last switch is journaled and survives a restart, but it never
        # loosens what the appliance was started with: `--approval manual` (or a manual
        # config) must not come up signing unattended because someone once switched a
        # previous run to auto. Of the two, the stricter mode wins.
        stored = self.appliance.journal.get_meta("approval_mode")
        if stored in ("auto", "manual"):
            self.mode = "manual" if "manual" in (stored, self.mode) else "auto"

    def set_mode(self, mode: str, who: str = "operator") -> None:
        if mode not in ("auto", "manual"):
            raise ValueError("mode must be auto or manual")
        with self.lock:
            old, self.mode = self.mode, mode
            self.appliance.journal.set_meta("approval_mode", mode)
            self.appliance.journal.log("approval-mode", {"from": old, "to": mode, "by": who})

    def submit(self, psbt: str, qc: Any, records: Any, lineage: list[str] | None) -> SignReply:
        """Answer a sign request: signed, refused, or pending an operator."""
        with self.lock:
            if self.mode == "auto":
                return self.appliance.handle_sign(psbt, qc, records, lineage).reply()
            rid = request_hash(psbt, qc, records)[:16]
            item = self.items.get(rid)
            if item is not None and item.state != "pending":
                if item.state == "approved":
                    # Signed when approved: the journal answers, with the bytes that left.
                    return self.appliance.handle_sign(psbt, qc, records, lineage).reply()
                if item.outcome is not None:
                    # Approved, but the policy or the journal refused it by then: say why,
                    # not that the operator refused.
                    return SignReply.refusal(item.outcome.get("reasons") or [])
                return SignReply.refusal(["refused by the operator"])
            if item is None:
                verdict, _, _ = self.appliance.decide(psbt, qc, records, lineage)
                if not verdict.ok:
                    return self.appliance.handle_sign(psbt, qc, records, lineage).reply()
                existing = (
                    self.appliance.journal.state().by_txid(verdict.candidate.txid)
                    if verdict.candidate
                    else None
                )
                if existing is not None and existing.signed_psbt:
                    return self.appliance.handle_sign(psbt, qc, records, lineage).reply()
                item = PendingRequest(rid, time.time(), psbt, qc, records, lineage, verdict.summary)
                self.items[rid] = item
            return SignReply.held(rid)

    def pending(self) -> list[PendingRequest]:
        with self.lock:
            return [i for i in self.items.values() if i.state == "pending"]

    def approve(self, rid: str) -> dict[str, Any]:
        with self.lock:
            item = self._get(rid)
            outcome = self.appliance.handle_sign(item.psbt, item.qc, item.records, item.lineage)
            item.state = "approved" if outcome.signed else "refused"
            item.outcome = outcome.to_json()
            return item.outcome

    def refuse(self, rid: str, reason: str | None = None) -> None:
        """Refuse a held request; the operator's reason, if given, is journaled with it."""
        why = "refused by the operator" + (f": {reason.strip()}" if reason and reason.strip()
                                           else "")
        with self.lock:
            item = self._get(rid)
            item.state = "refused"
            self.appliance.journal.log(
                "refused",
                {"reasons": [why], **item.summary},
                item.summary.get("txid"),
                item.summary.get("epoch"),
                item.summary.get("round"),
            )

    def _get(self, rid: str) -> PendingRequest:
        item = self.items.get(rid)
        if item is None or item.state != "pending":
            raise KeyError(f"no pending request {rid}")
        return item
