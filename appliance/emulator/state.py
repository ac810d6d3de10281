"""The emulator's persistent storage (what a Jade keeps in flash), as a JSON file.

Format (version 1):

    {"version": 1,
     "wallet": {"mnemonic": "<words>", "passphrase": null} | null,
     "network_type": "MAIN" | "TEST" | null,
     "multisigs": [<MultisigRecord.to_json()>, ...]}

The mnemonic is secret: the file is written with mode 0600, atomically
(temporary file, fsync, rename) so a crash never leaves half a file. Temporary
wallets (raw seeds, debug_set_mnemonic temporary_wallet=True) are never saved,
as the firmware never persists them either.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.emulator.multisig import MultisigRecord

STATE_VERSION = 1


@dataclass
class StoredState:
    mnemonic: str | None = None
    passphrase: str | None = None
    network_type: str | None = None
    multisigs: list[MultisigRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        wallet = None
        if self.mnemonic is not None:
            wallet = {"mnemonic": self.mnemonic, "passphrase": self.passphrase}
        return {"version": STATE_VERSION, "wallet": wallet, "network_type": self.network_type,
                "multisigs": [r.to_json() for r in self.multisigs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported emulator state version {data.get('version')!r}")
        wallet = data.get("wallet") or {}
        network_type = data.get("network_type")
        if network_type not in (None, "MAIN", "TEST"):
            raise ValueError(f"bad network_type {network_type!r} in emulator state")
        return cls(wallet.get("mnemonic"), wallet.get("passphrase"), network_type,
                   [MultisigRecord.from_json(r) for r in data.get("multisigs", [])])


def load_state(path: Path) -> StoredState:
    """The stored state, or an empty one if the file does not exist yet."""
    if not path.exists():
        return StoredState()
    try:
        return StoredState.from_json(json.loads(path.read_text()))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed emulator state ({exc!r})") from exc


def save_state(path: Path, state: StoredState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".jade-state-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(state.to_json(), fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
