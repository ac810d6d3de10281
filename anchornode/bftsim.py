"""A simulated BFT chain for the devnet: real keys, real signed QCs, certified epochs.

It stands in for the BFT node a validator would read QCs from. Everything it emits
verifies with the same code the appliance uses; nothing is faked.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from bftanchor.bftsig import pubkey_from_secret, sign_compact
from bftanchor.epoch import SCRIPT_WSH, EpochRecord, Validator, threshold_for
from bftanchor.qc import QC, VoteInfo, signed_digest


@dataclass
class SimValidator:
    id: str
    bft_secret: bytes

    @property
    def bft_pubkey(self) -> bytes:
        return pubkey_from_secret(self.bft_secret)


@dataclass
class SimulatedBFTChain:
    validators: list[SimValidator]
    rounds_per_epoch: int
    seed: int = 0
    records: dict[int, EpochRecord] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)  # epoch -> n, when not all
    _last_id: bytes = bytes(32)
    _last_round: int = 0
    _state: bytes = bytes(32)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @classmethod
    def create(cls, n: int, rounds_per_epoch: int, seed: int = 0) -> SimulatedBFTChain:
        vals = [
            SimValidator(
                f"v{i}", hashlib.sha256(f"bft-anchor devnet {seed} v{i}".encode()).digest()
            )
            for i in range(n)
        ]
        return cls(vals, rounds_per_epoch, seed)

    @property
    def threshold(self) -> int:
        return threshold_for(len(self.validators))

    def epoch_rounds(self, epoch: int) -> tuple[int, int]:
        start = epoch * self.rounds_per_epoch
        return start, start + self.rounds_per_epoch - 1

    def members(self, epoch: int) -> list[SimValidator]:
        """The epoch's validator set: its record's members when it has one, else the first
        n of the chain's validators (all by default)."""
        record = self.records.get(epoch)
        if record is not None:
            ids = {v.id for v in record.validators}
            return [v for v in self.validators if v.id in ids]
        n = self.sizes.get(epoch, len(self.validators))
        return self.validators[:n]

    def make_record(
        self,
        epoch: int,
        pow_keys: dict[str, str],
        script: str = SCRIPT_WSH,
        n: int | None = None,
    ) -> EpochRecord:
        """The record for an epoch, certified by the previous epoch's quorum.

        `n` sets the epoch's size (its first n validators), so sets can grow and shrink.
        """
        if n is not None:
            if not 1 <= n <= len(self.validators):
                raise ValueError(f"epoch size {n} outside 1..{len(self.validators)}")
            self.sizes[epoch] = n
        members = self.members(epoch)
        start, end = self.epoch_rounds(epoch)
        record = EpochRecord(
            epoch=epoch,
            start_round=start,
            end_round=end,
            threshold=threshold_for(len(members)),
            validators=tuple(Validator(v.id, v.bft_pubkey, pow_keys[v.id]) for v in members),
            script=script,
        )
        if epoch > 0:
            digest = record.certificate_digest()
            signers = self._quorum(epoch - 1)
            record = record.with_certificate(
                {v.id: sign_compact(v.bft_secret, digest) for v in signers}
            )
        record.validate()
        self.records[epoch] = record
        return record

    def _quorum(self, epoch: int | None = None) -> list[SimValidator]:
        members = self.validators if epoch is None else self.members(epoch)
        k = self._rng.randint(threshold_for(len(members)), len(members))
        chosen = sorted(self._rng.sample(range(len(members)), k))
        return [members[i] for i in chosen]

    def qc(self, epoch: int, round: int) -> QC:
        """The QC that commits round `round`: a random k..n quorum signs it."""
        self._state = hashlib.sha256(self._state + round.to_bytes(8, "big")).digest()
        vid = hashlib.sha256(b"block" + self._state).digest()
        vote = VoteInfo(
            id=vid,
            round=round,
            epoch=epoch,
            parent_id=self._last_id,
            parent_round=self._last_round,
            exec_state_id=hashlib.sha256(b"exec" + self._state).digest(),
        )
        commit_state_id = hashlib.sha256(b"commit" + self._state).digest()
        vih = vote.hash()
        digest = signed_digest(commit_state_id, vih)
        sigs = tuple((v.id, sign_compact(v.bft_secret, digest)) for v in self._quorum(epoch))
        self._last_id, self._last_round = vid, round
        return QC(vote, commit_state_id, vih, sigs)
