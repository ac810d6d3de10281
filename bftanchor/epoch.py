"""Epoch records: the validator set of one epoch, its keys and its certificate.

A record for epoch e+1 is trusted only when epoch e's quorum signed its canonical
JSON; epoch 0 is trusted from the deployment file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from embit.descriptor.arguments import Key

from bftanchor.bftsig import verify_compact
from bftanchor.errors import EpochRecordError, QCError

HARDENED = 0x80000000

# The script that locks the coin during an epoch (DESIGN.md "Multisig scripts"). An
# absent "script" means wsh, so records made before tapscript keep their canonical JSON.
SCRIPT_WSH = "wsh-sortedmulti"
SCRIPT_TR = "tr-sortedmulti_a"
# BIP48 script type of each: 2' is native segwit multisig, 3' taproot multisig.
BIP48_SCRIPT_TYPE = {SCRIPT_WSH: 2, SCRIPT_TR: 3}


def threshold_for(n: int) -> int:
    """k = floor(2n/3) + 1: the smallest quorum that any two quorums intersect in."""
    return (2 * n) // 3 + 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Validator:
    id: str
    bft_pubkey: bytes
    pow_key: str

    @cached_property
    def key(self) -> Key:
        # Parsing an xpub is pure Python and the policy asks for it many times a request.
        return Key.from_string(self.pow_key)

    @property
    def fingerprint(self) -> bytes:
        return self.key.origin.fingerprint

    @property
    def origin_path(self) -> list[int]:
        return list(self.key.origin.derivation)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "bft_pubkey": self.bft_pubkey.hex(), "pow_key": self.pow_key}


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    start_round: int
    end_round: int
    threshold: int
    validators: tuple[Validator, ...]
    certificate: dict[str, bytes] = field(default_factory=dict)
    script: str = SCRIPT_WSH

    @property
    def n(self) -> int:
        return len(self.validators)

    @property
    def is_taproot(self) -> bool:
        return self.script == SCRIPT_TR

    @property
    def script_type(self) -> int:
        """The BIP48 script type of this epoch's keys (2 for wsh, 3 for taproot)."""
        return BIP48_SCRIPT_TYPE[self.script]

    @property
    def coin_type(self) -> int:
        return self.validators[0].origin_path[1] - HARDENED

    def index_of(self, validator_id: str) -> int:
        for i, v in enumerate(self.validators):
            if v.id == validator_id:
                return i
        raise KeyError(validator_id)

    def body_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "epoch": self.epoch,
            "start_round": self.start_round,
            "end_round": self.end_round,
            "threshold": self.threshold,
            "validators": [v.to_json() for v in self.validators],
        }
        if self.script != SCRIPT_WSH:
            body["script"] = self.script
        return body

    def to_json(self) -> dict[str, Any]:
        body = self.body_json()
        body["certificate"] = {vid: sig.hex() for vid, sig in self.certificate.items()}
        return body

    def certificate_digest(self) -> bytes:
        """SHA256 of the canonical JSON without the certificate (what the old quorum signs)."""
        return hashlib.sha256(canonical_json(self.body_json()).encode()).digest()

    def with_certificate(self, certificate: dict[str, bytes]) -> EpochRecord:
        return EpochRecord(
            self.epoch,
            self.start_round,
            self.end_round,
            self.threshold,
            self.validators,
            dict(certificate),
            self.script,
        )

    @classmethod
    def from_json(cls, data: Any) -> EpochRecord:
        if isinstance(data, str):
            # The journal hands the same stored text over and over: parse it once.
            return _from_text(data)
        if isinstance(data, dict):
            # So do requests (every sign request carries the same records): the same
            # object, then its multisig, is derived once (descriptor.multisig_for).
            try:
                text = json.dumps(data, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError):
                return cls._from_json(data)
            return _from_text(text)
        return cls._from_json(data)

    @classmethod
    def _from_json(cls, data: Any) -> EpochRecord:
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise EpochRecordError(f"epoch record is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise EpochRecordError("epoch record must be a JSON object")
        try:
            epoch = _uint(data, "epoch")
            start, end = _uint(data, "start_round"), _uint(data, "end_round")
            threshold = _uint(data, "threshold")
            raw_validators = data["validators"]
            raw_cert = data.get("certificate") or {}
            if not isinstance(raw_validators, list) or not isinstance(raw_cert, dict):
                raise EpochRecordError("validators must be a list and certificate an object")
            validators = tuple(
                Validator(
                    id=str(v["id"]),
                    bft_pubkey=bytes.fromhex(v["bft_pubkey"]),
                    pow_key=str(v["pow_key"]),
                )
                for v in raw_validators
            )
            cert = {str(k): bytes.fromhex(s) for k, s in raw_cert.items()}
            script = data.get("script", SCRIPT_WSH)
            if script not in BIP48_SCRIPT_TYPE:
                raise EpochRecordError(
                    f"epoch record field script is {script!r}; expected one of "
                    + ", ".join(sorted(BIP48_SCRIPT_TYPE))
                )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, EpochRecordError):
                raise
            raise EpochRecordError(f"epoch record is malformed: {exc!r}") from exc
        record = cls(epoch, start, end, threshold, validators, cert, script)
        record.validate()
        return record

    def validate(self) -> None:
        """Internal consistency: threshold, unique members, keys on this epoch's path."""
        if self.script not in BIP48_SCRIPT_TYPE:
            raise EpochRecordError(f"epoch {self.epoch}: unknown script {self.script!r}")
        if self.end_round < self.start_round:
            raise EpochRecordError(f"epoch {self.epoch}: end_round before start_round")
        if not self.validators:
            raise EpochRecordError(f"epoch {self.epoch}: no validators")
        if self.threshold != threshold_for(self.n):
            raise EpochRecordError(
                f"epoch {self.epoch}: threshold {self.threshold} is not floor(2n/3)+1 = "
                f"{threshold_for(self.n)} for n = {self.n}"
            )
        ids = [v.id for v in self.validators]
        if len(set(ids)) != len(ids):
            raise EpochRecordError(f"epoch {self.epoch}: duplicate validator id")
        # One BFT key under two ids would count twice towards a QC's or a certificate's
        # threshold.
        if len({v.bft_pubkey for v in self.validators}) != self.n:
            raise EpochRecordError(f"epoch {self.epoch}: two validators share a bft_pubkey")
        for v in self.validators:
            if len(v.bft_pubkey) != 33 or v.bft_pubkey[0] not in (2, 3):
                raise EpochRecordError(f"validator {v.id}: bft_pubkey must be 33-byte compressed")
            try:
                key = v.key
            except Exception as exc:
                raise EpochRecordError(f"validator {v.id}: pow_key does not parse: {exc}") from exc
            if key.origin is None or not key.is_extended:
                raise EpochRecordError(f"validator {v.id}: pow_key needs [fingerprint/path]xpub")
            if key.is_private:
                raise EpochRecordError(f"validator {v.id}: pow_key must be public")
            path = list(key.origin.derivation)
            expected_tail = [self.epoch + HARDENED, self.script_type + HARDENED]
            if (
                len(path) != 4
                or path[0] != 48 + HARDENED
                or path[1] < HARDENED
                or path[2:] != expected_tail
            ):
                raise EpochRecordError(
                    f"validator {v.id}: pow_key path must be "
                    f"48h/<coin>h/{self.epoch}h/{self.script_type}h ({self.script})"
                )
        if len({v.origin_path[1] for v in self.validators}) != 1:
            raise EpochRecordError(f"epoch {self.epoch}: validators disagree on the coin type")
        if len({bytes(v.key.key.sec()) for v in self.validators}) != self.n:
            raise EpochRecordError(f"epoch {self.epoch}: two validators share a pow_key")


@lru_cache(maxsize=256)
def _from_text(text: str) -> EpochRecord:
    """Records are immutable, so one parsed object can serve every caller of the text."""
    return EpochRecord._from_json(text)


def _uint(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EpochRecordError(f"epoch record field {key} is missing or not an unsigned integer")
    return value


def verify_certificate(record: EpochRecord, previous: EpochRecord) -> list[str]:
    """Check that `previous`'s quorum certified `record`; return the certifiers."""
    if record.epoch != previous.epoch + 1:
        raise EpochRecordError(
            f"epoch {record.epoch} cannot be certified by epoch {previous.epoch}"
        )
    if record.start_round != previous.end_round + 1:
        raise EpochRecordError(
            f"epoch {record.epoch} starts at round {record.start_round}, "
            f"not right after epoch {previous.epoch}'s end ({previous.end_round})"
        )
    members = {v.id: v for v in previous.validators}
    digest = record.certificate_digest()
    for vid, sig in record.certificate.items():
        if vid not in members:
            raise EpochRecordError(
                f"epoch {record.epoch}: certifier {vid} is not in epoch {previous.epoch}"
            )
        try:
            verify_compact(members[vid].bft_pubkey, digest, sig)
        except QCError as exc:
            raise EpochRecordError(
                f"epoch {record.epoch}: certificate signature of {vid}: {exc}"
            ) from exc
    if len(record.certificate) < previous.threshold:
        raise EpochRecordError(
            f"epoch {record.epoch}: certificate has {len(record.certificate)} signature(s), "
            f"epoch {previous.epoch}'s quorum is {previous.threshold}"
        )
    return sorted(record.certificate)


def verify_chain(records: list[EpochRecord], trusted: EpochRecord) -> list[EpochRecord]:
    """Order records from a trusted one and check each certifies the next."""
    by_epoch: dict[int, EpochRecord] = {}
    for r in records:
        if r.epoch in by_epoch and by_epoch[r.epoch] != r:
            raise EpochRecordError(f"two different records for epoch {r.epoch}")
        by_epoch[r.epoch] = r
    if trusted.epoch in by_epoch and by_epoch[trusted.epoch].body_json() != trusted.body_json():
        raise EpochRecordError(f"epoch {trusted.epoch} differs from the trusted record")
    chain = [trusted]
    while chain[-1].epoch + 1 in by_epoch:
        nxt = by_epoch[chain[-1].epoch + 1]
        verify_certificate(nxt, chain[-1])
        chain.append(nxt)
    return chain
