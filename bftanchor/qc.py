"""Quorum certificates: parsing, canonical hashes and strict verification.

The appliance's whole trust in "this state was committed" rests here, so every
way a QC can be wrong raises its own error class (errors.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bftanchor.bftsig import verify_each
from bftanchor.errors import (
    BelowThreshold,
    DuplicateSigner,
    EpochMismatch,
    NullCommitState,
    QCFormatError,
    RoundOutsideEpoch,
    UnknownSigner,
    VoteInfoHashMismatch,
)

NULL_ID = bytes(32)


def _hex(obj: dict[str, Any], key: str, size: int, where: str) -> bytes:
    value = obj.get(key)
    if not isinstance(value, str):
        raise QCFormatError(f"{where}.{key} is missing or not a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise QCFormatError(f"{where}.{key} is not valid hex") from exc
    if len(raw) != size:
        raise QCFormatError(f"{where}.{key} is {len(raw)} bytes, expected {size}")
    return raw


def _uint(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise QCFormatError(f"{where}.{key} is missing or not an unsigned 64-bit integer")
    return value


@dataclass(frozen=True)
class VoteInfo:
    id: bytes
    round: int
    epoch: int
    parent_id: bytes
    parent_round: int
    exec_state_id: bytes

    def hash(self) -> bytes:
        """vote_info_hash = SHA256(id || round || epoch || parent_id || parent_round || exec)."""
        return hashlib.sha256(
            self.id
            + self.round.to_bytes(8, "big")
            + self.epoch.to_bytes(8, "big")
            + self.parent_id
            + self.parent_round.to_bytes(8, "big")
            + self.exec_state_id
        ).digest()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id.hex(),
            "round": self.round,
            "epoch": self.epoch,
            "parent_id": self.parent_id.hex(),
            "parent_round": self.parent_round,
            "exec_state_id": self.exec_state_id.hex(),
        }


@dataclass(frozen=True)
class QC:
    vote_info: VoteInfo
    commit_state_id: bytes
    vote_info_hash: bytes
    signatures: tuple[tuple[str, bytes], ...]

    @property
    def epoch(self) -> int:
        return self.vote_info.epoch

    @property
    def round(self) -> int:
        return self.vote_info.round

    def signed_digest(self) -> bytes:
        """What each validator signs: SHA256(commit_state_id || vote_info_hash)."""
        return signed_digest(self.commit_state_id, self.vote_info_hash)

    def to_json(self) -> dict[str, Any]:
        return {
            "vote_info": self.vote_info.to_json(),
            "ledger_commit_info": {
                "commit_state_id": self.commit_state_id.hex(),
                "vote_info_hash": self.vote_info_hash.hex(),
            },
            "signatures": {vid: sig.hex() for vid, sig in self.signatures},
        }

    @classmethod
    def from_json(cls, data: Any) -> QC:
        """Parse the QC JSON of DESIGN.md (a dict, or a str/bytes holding it)."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data, object_pairs_hook=_reject_duplicate_keys)
            except DuplicateSigner:
                raise
            except ValueError as exc:
                raise QCFormatError(f"QC is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise QCFormatError("QC must be a JSON object")
        vi = data.get("vote_info")
        lci = data.get("ledger_commit_info")
        sigs = data.get("signatures")
        if not isinstance(vi, dict):
            raise QCFormatError("vote_info is missing or not an object")
        if not isinstance(lci, dict):
            raise QCFormatError("ledger_commit_info is missing or not an object")
        if not isinstance(sigs, (dict, list)):
            raise QCFormatError("signatures is missing or not an object")
        vote_info = VoteInfo(
            id=_hex(vi, "id", 32, "vote_info"),
            round=_uint(vi, "round", "vote_info"),
            epoch=_uint(vi, "epoch", "vote_info"),
            parent_id=_hex(vi, "parent_id", 32, "vote_info"),
            parent_round=_uint(vi, "parent_round", "vote_info"),
            exec_state_id=_hex(vi, "exec_state_id", 32, "vote_info"),
        )
        # A list of [id, sig] pairs is accepted too so that a duplicate signer, which a
        # JSON object cannot carry, can still be expressed and refused by name.
        pairs = list(sigs.items()) if isinstance(sigs, dict) else sigs
        parsed: list[tuple[str, bytes]] = []
        for pair in pairs:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise QCFormatError("signatures entries must be id -> hex64")
            vid, sig = pair
            if not isinstance(vid, str) or not vid:
                raise QCFormatError("a signer id is empty or not a string")
            parsed.append((vid, _hex({"s": sig}, "s", 64, f"signatures[{vid}]")))
        return cls(
            vote_info=vote_info,
            commit_state_id=_hex(lci, "commit_state_id", 32, "ledger_commit_info"),
            vote_info_hash=_hex(lci, "vote_info_hash", 32, "ledger_commit_info"),
            signatures=tuple(parsed),
        )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> Any:
    keys = [k for k, _ in pairs]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise DuplicateSigner(f"duplicate JSON key(s): {', '.join(sorted(dupes))}")
    return dict(pairs)


def signed_digest(commit_state_id: bytes, vote_info_hash: bytes) -> bytes:
    return hashlib.sha256(commit_state_id + vote_info_hash).digest()


# What checks the signatures: (pubkey, digest, sig64) items in, each one's error out.
SignatureCheck = Callable[[Sequence[tuple[bytes, bytes, bytes]]], list[Exception | None]]


def signature_items(qc: QC, record: Any) -> list[tuple[bytes, bytes, bytes]]:
    """(pubkey, digest, sig64) of each QC signature by a member, in the QC's order: what
    verify_qc hands its signature check once the QC's structure is sound."""
    members = {v.id: v for v in record.validators}
    digest = qc.signed_digest()
    return [(members[vid].bft_pubkey, digest, sig) for vid, sig in qc.signatures
            if vid in members]


def verify_qc(qc: QC, record: Any, check: SignatureCheck = verify_each) -> list[str]:
    """Verify a QC against the epoch record of its epoch; return the signer ids.

    Strict: each failure raises its own QCError subclass, checked in an order that
    names the most fundamental problem first. `check` verifies the signatures
    (bftsig.verify_each unless the caller has them checked elsewhere meanwhile).
    """
    if qc.epoch != record.epoch:
        raise EpochMismatch(f"QC is for epoch {qc.epoch}, record is for epoch {record.epoch}")
    if qc.vote_info.hash() != qc.vote_info_hash:
        raise VoteInfoHashMismatch("vote_info_hash does not match the hash of vote_info")
    if qc.commit_state_id == NULL_ID:
        raise NullCommitState("commit_state_id is null: nothing was committed")
    # A QC's round lies within its epoch's range (DESIGN.md): otherwise a quorum's QC from
    # outside the epoch's rounds could be anchored as the epoch's, around the handover
    # window. (The design's QC vector, round 41 of epoch 2 = rounds 200..299, predates
    # the rule and pins only the digests.)
    if not record.start_round <= qc.round <= record.end_round:
        raise RoundOutsideEpoch(
            f"QC round {qc.round} is outside epoch {record.epoch}'s rounds "
            f"{record.start_round}..{record.end_round}"
        )
    members = {v.id for v in record.validators}
    seen: set[str] = set()
    for vid, _sig in qc.signatures:
        if vid in seen:
            raise DuplicateSigner(f"validator {vid} signed twice")
        seen.add(vid)
        if vid not in members:
            raise UnknownSigner(f"signer {vid} is not a member of epoch {record.epoch}")
    problems = check(signature_items(qc, record))
    for (vid, _sig), exc in zip(qc.signatures, problems, strict=True):
        if exc is not None:  # the first bad one in the QC's order
            raise type(exc)(f"signature of {vid}: {exc}") from exc
    if len(seen) < record.threshold:
        raise BelowThreshold(
            f"{len(seen)} signature(s), epoch {record.epoch} needs {record.threshold}"
        )
    return [vid for vid, _ in qc.signatures]
