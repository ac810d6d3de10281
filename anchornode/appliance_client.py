"""How a node reaches its own appliance: in this process, or over the serial link."""

from __future__ import annotations

from typing import Any, Protocol

from bftanchor.signreply import SignReply


class ApplianceClient(Protocol):
    def sign(
        self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: list[str] | None
    ) -> SignReply: ...


class InProcessAppliance:
    """An appliance object in this process (tests and the all-in-one devnet)."""

    def __init__(self, appliance: Any) -> None:
        self.appliance = appliance

    def sign(
        self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: list[str] | None
    ) -> SignReply:
        return self.appliance.handle_sign(psbt_b64, qc_json, records_json, lineage).reply()
