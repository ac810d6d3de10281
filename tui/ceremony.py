"""The key rotation ceremony for the next epoch, as a state machine that cannot be skipped.

Each step checks that it is the current one, so a wallet is never registered before its
record's certificate and fingerprint were checked, and the appliance is never armed for a
handover to a multisig the device has not registered. Pure: the screen does the device
and appliance calls and reports each result here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from embit.descriptor.arguments import Key

from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import EpochRecord, verify_certificate
from bftanchor.errors import CheckpointError
from tui.decode import same_fingerprint, wallet_fingerprint

STEPS: tuple[tuple[str, str], ...] = (
    ("a", "show this appliance's key for the next epoch"),
    ("b", "load the next epoch's record and verify its certificate"),
    ("c", "confirm the wallet fingerprint out of band"),
    ("d", "register the next multisig on the device"),
    ("e", "arm the appliance for the handover"),
)
KEY, RECORD, FINGERPRINT, REGISTER, ARM, DONE = range(6)


class CeremonyError(Exception):
    """A step refused: out of order, or its check failed (the message says which)."""


def _same_key(a: str, b: str) -> bool:
    try:
        ka, kb = Key.from_string(a), Key.from_string(b)
    except Exception:
        return False
    if ka.origin is None or kb.origin is None:
        return False
    return (
        ka.origin.fingerprint == kb.origin.fingerprint
        and list(ka.origin.derivation) == list(kb.origin.derivation)
        and ka.key.key.sec() == kb.key.key.sec()
        and ka.key.chain_code == kb.key.chain_code
    )


@dataclass
class Ceremony:
    current: EpochRecord
    step: int = KEY
    my_key: str | None = None
    record: EpochRecord | None = None
    certifiers: list[str] = field(default_factory=list)
    holds_key: bool = False
    address: str | None = None
    mismatches: int = 0  # wrong fingerprints typed: each one restarted step (c)

    @property
    def next_epoch(self) -> int:
        return self.current.epoch + 1

    @property
    def multisig(self) -> EpochMultisig | None:
        return EpochMultisig(self.record) if self.record is not None else None

    @property
    def fingerprint(self) -> str | None:
        ms = self.multisig
        return wallet_fingerprint(ms) if ms is not None else None

    @property
    def done(self) -> bool:
        return self.step == DONE

    def _at(self, step: int) -> None:
        if self.step == step:
            return
        letter, title = STEPS[step]
        if self.step < step:
            now = STEPS[self.step]
            raise CeremonyError(f"step ({letter}) must wait: first ({now[0]}) {now[1]}")
        raise CeremonyError(f"step ({letter}) is done; restart the ceremony to redo it")

    def show_key(self, key: str) -> None:
        self._at(KEY)
        self.my_key = key
        self.step = RECORD

    def load_record(self, path: str) -> EpochRecord:
        """Read the record (a record, or a list of them) and verify it by the current quorum."""
        self._at(RECORD)
        file = Path(path.strip()).expanduser()
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise CeremonyError(f"cannot read {file}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("epochs"), list):
            data = data["epochs"]
        candidates = data if isinstance(data, list) else [data]
        wanted = [
            c for c in candidates if isinstance(c, dict) and c.get("epoch") == self.next_epoch
        ]
        if not wanted:
            raise CeremonyError(f"{file} holds no record for epoch {self.next_epoch}")
        try:
            record = EpochRecord.from_json(wanted[0])
            certifiers = verify_certificate(record, self.current)
            EpochMultisig(record)
        except CheckpointError as exc:
            raise CeremonyError(f"bad record: {exc}") from exc
        self.record, self.certifiers = record, certifiers
        self.holds_key = self.my_key is not None and any(
            _same_key(v.pow_key, self.my_key) for v in record.validators
        )
        self.step = FINGERPRINT
        return record

    def confirm_fingerprint(self, typed: str) -> None:
        """Compare what the operator typed, as received out of band, with the record's.

        The expected value is never shown before a match (it would give the answer away);
        a mismatch restarts this step and says the record may be forged.
        """
        self._at(FINGERPRINT)
        if not typed.strip():
            raise CeremonyError("type the wallet fingerprint you were given out of band")
        if not same_fingerprint(typed, self.fingerprint or ""):
            self.mismatches += 1
            raise CeremonyError(
                f"fingerprint {typed.strip()!r} does not match this record's: the record may "
                "be forged. Do not go on unless a fingerprint you typed wrongly explains it; "
                "check the value with its sender, or get the record again from a source "
                "you trust, and type the fingerprint again"
            )
        self.step = REGISTER

    def registered(self, address: str | None) -> None:
        self._at(REGISTER)
        self.address = address
        self.step = ARM

    def armed(self) -> None:
        self._at(ARM)
        self.step = DONE

    def check(self, step: int) -> str | None:
        """Why `step` cannot be done now (None: it can)."""
        try:
            self._at(step)
        except CeremonyError as exc:
            return str(exc)
        return None
