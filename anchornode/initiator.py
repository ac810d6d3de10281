"""The initiator's half of a checkpoint: propose, collect k signatures, finalize, deliver."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from embit.psbt import PSBT
from embit.transaction import Transaction

from anchornode.delivery import CheckpointFailed, deliver  # noqa: F401 (re-exported)
from bftanchor.descriptor import EpochMultisig, multisig_for
from bftanchor.epoch import EpochRecord
from bftanchor.payload import Payload
from bftanchor.qc import QC
from bftanchor.template import (
    Coin,
    build_checkpoint_psbt,
    build_checkpoint_tx,
    fee_for,
    finalize,
    verify_partial_sig,
)

log = logging.getLogger("bft_anchor.node")


class SigningPeer(Protocol):
    """A validator that can be asked to sign (in-process, or over its appliance link)."""

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
    sizing = build_checkpoint_tx(coin, payload, dest, 1)
    fee = fee_for(fee_rate, sizing, source)
    psbt = build_checkpoint_psbt(coin, source, payload, dest, fee)
    recs = [records[e] for e in sorted({coin.epoch, dest.epoch})]
    return Proposal(psbt, qc, recs, source, dest, fee)


def collect(proposal: Proposal, peers: list[SigningPeer]) -> tuple[PSBT, list[str], dict]:
    """Ask peers in turn until k valid signatures are in; check each before keeping it."""
    psbt = PSBT.parse(proposal.psbt.serialize())
    b64 = proposal.psbt.to_string()
    qc_json = proposal.qc.to_json()
    records_json = [r.to_json() for r in proposal.records]
    signed_by: list[str] = []
    refusals: dict[str, list[str]] = {}
    keys = {k.validator_id: k.pubkey for k in proposal.source.keys}
    for peer in peers:
        if len(signed_by) >= proposal.source.threshold:
            break
        try:
            reply = peer.request_signature(b64, qc_json, records_json)
        except Exception as exc:  # a peer down or lying must not stop the round
            refusals[peer.validator_id] = [f"unreachable: {exc}"]
            log.warning("validator %s unreachable: %s", peer.validator_id, exc)
            continue
        if not reply.get("signed"):
            refusals[peer.validator_id] = list(reply.get("reasons") or ["refused"])
            log.warning(
                "validator %s refused: %s",
                peer.validator_id,
                "; ".join(refusals[peer.validator_id]),
            )
            continue
        try:
            theirs = PSBT.from_string(reply["psbt"])
            if theirs.tx.txid() != psbt.tx.txid():
                raise CheckpointFailed("signed a different transaction")
            pub = keys[peer.validator_id]
            sig = theirs.inputs[0].partial_sigs[pub]
            verify_partial_sig(psbt, 0, proposal.source, pub, sig)
        except Exception as exc:
            refusals[peer.validator_id] = [f"bad signature: {exc}"]
            log.warning("validator %s returned a bad signature: %s", peer.validator_id, exc)
            continue
        psbt.inputs[0].partial_sigs[pub] = sig
        signed_by.append(peer.validator_id)
    return psbt, signed_by, refusals


def assemble(proposal: Proposal, psbt: PSBT) -> Transaction:
    return finalize(psbt, proposal.source)
