"""One checkpoint PSBT at one fee, and its signatures gathered from in-process appliances.

Tests and benchmarks that probe the appliance directly need a single PSBT and the
signatures of chosen validators; the node's round (anchornode/round.py) does the same
for a whole fee ladder over the peer protocol, and both check what comes back with
`add_signatures`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from embit.psbt import PSBT
from embit.transaction import Transaction

from anchornode.round import add_signatures
from bftanchor.descriptor import EpochMultisig, multisig_for
from bftanchor.epoch import EpochRecord
from bftanchor.payload import Payload
from bftanchor.qc import QC
from bftanchor.template import Coin, build_checkpoint_psbt, build_checkpoint_tx, fee_for, finalize

log = logging.getLogger("bft_anchor.harness")


class SigningPeer(Protocol):
    """A validator whose appliance can be asked to sign (in this process)."""

    validator_id: str

    def request_signature(self, psbt_b64: str, qc_json: Any, records_json: Any) -> dict: ...


@dataclass
class Proposal:
    psbt: PSBT
    qc: QC
    records: list[EpochRecord]
    source: EpochMultisig
    dest: EpochMultisig
    fee: int

    @property
    def txid(self) -> str:
        return self.psbt.tx.txid().hex()

    def request(self) -> tuple[str, Any, list[Any]]:
        """What every validator's appliance is sent: (psbt, qc, records)."""
        return self.psbt.to_string(), self.qc.to_json(), [r.to_json() for r in self.records]


def propose(
    coin: Coin,
    qc: QC,
    records: dict[int, EpochRecord],
    handover: bool,
    fee_rate: float,
    magic: bytes,
) -> Proposal:
    source = multisig_for(records[coin.epoch])
    dest = multisig_for(records[coin.epoch + 1]) if handover else source
    payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=magic)
    fee = fee_for(fee_rate, build_checkpoint_tx(coin, payload, dest, 1), source)
    psbt = build_checkpoint_psbt(coin, source, payload, dest, fee)
    recs = [records[e] for e in sorted({coin.epoch, dest.epoch})]
    return Proposal(psbt, qc, recs, source, dest, fee)


def collect(proposal: Proposal, peers: list[SigningPeer]) -> tuple[PSBT, list[str], dict]:
    """Ask peers in turn until k valid signatures are in: (psbt, signed_by, refusals)."""
    collected = [PSBT.parse(proposal.psbt.serialize())]
    request = proposal.request()
    signed_by: list[str] = []
    refusals: dict[str, list[str]] = {}
    keys = {k.validator_id: k.pubkey for k in proposal.source.keys}
    for peer in peers:
        if len(signed_by) >= proposal.source.threshold:
            break
        vid = peer.validator_id
        try:
            reply = peer.request_signature(*request)
        except Exception as exc:  # a peer down or lying must not stop the round
            refusals[vid] = [f"unreachable: {exc}"]
            continue
        if not reply.get("signed"):
            refusals[vid] = list(reply.get("reasons") or ["refused"])
            continue
        try:
            add_signatures(collected, proposal.source, keys[vid], [reply["psbt"]])
        except Exception as exc:
            refusals[vid] = [f"bad signature: {exc}"]
            continue
        signed_by.append(vid)
    return collected[0], signed_by, refusals


def assemble(proposal: Proposal, psbt: PSBT) -> Transaction:
    return finalize(psbt, proposal.source)
