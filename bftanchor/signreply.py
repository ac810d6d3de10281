"""An appliance's answer to a sign request: one typed message from the appliance's
decision, over the serial link, to the node's round.

Signed (the PSBT carrying its partial signatures), refused (with every reason), or
pending (held for the operator's approval). On the link it is a SIGN_REPLY, REFUSAL or
PENDING message (bftanchor/link/messages.py); in one process it is passed as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bftanchor.link.messages import MsgType


@dataclass(frozen=True)
class SignReply:
    signed: bool
    psbt: str | None = None  # base64, when signed
    reasons: tuple[str, ...] = ()  # when refused or pending: for a person
    pending: bool = False
    request: str | None = None  # the operator's handle of a pending request
    from_journal: bool = False  # a signature given before, answered again

    @classmethod
    def signature(cls, psbt: str, from_journal: bool = False) -> SignReply:
        return cls(True, psbt, (), from_journal=from_journal)

    @classmethod
    def refusal(cls, reasons: list[str] | tuple[str, ...]) -> SignReply:
        return cls(False, None, tuple(reasons) or ("refused",))

    @classmethod
    def held(cls, request: str, message: str = "waiting for the operator's approval") -> SignReply:
        return cls(False, None, (message,), pending=True, request=request)

    def to_link(self, request_id: int) -> tuple[MsgType, dict[str, Any]]:
        """The link message that carries this reply (answering request `request_id`)."""
        if self.signed:
            return MsgType.SIGN_REPLY, {"psbt": self.psbt, "from_journal": self.from_journal}
        if self.pending:
            return MsgType.PENDING, {
                "request_id": request_id,
                "message": f"held for approval as {self.request}",
            }
        return MsgType.REFUSAL, {"reasons": list(self.reasons)}

    @classmethod
    def from_link(cls, msg_type: int, payload: dict[str, Any]) -> SignReply:
        """The reply a (validated) link message carries."""
        if msg_type == MsgType.SIGN_REPLY:
            return cls.signature(str(payload["psbt"]), bool(payload.get("from_journal")))
        if msg_type == MsgType.PENDING:
            return cls.held(str(payload.get("request_id")), str(payload.get("message", "pending")))
        if msg_type == MsgType.REFUSAL:
            return cls.refusal([str(r) for r in payload.get("reasons") or []])
        return cls.refusal([f"unexpected answer to a sign request: message type {msg_type}"])

    def to_json(self) -> dict[str, Any]:
        return {
            "signed": self.signed,
            "psbt": self.psbt,
            "reasons": list(self.reasons),
            "pending": self.pending,
            "request": self.request,
            "from_journal": self.from_journal,
        }
