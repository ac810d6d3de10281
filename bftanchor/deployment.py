"""The deployment file: what every party agrees on before the first checkpoint.

It names the PoW chain, the payload magic, the genesis coin, epoch 0's record,
which is trusted from this file alone (later epochs are trusted by certificate), and
the handover window: the last W rounds of every epoch, the only rounds a handover may
carry and rounds no regular checkpoint may carry (end_round - W < r <= end_round).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError
from bftanchor.network import network
from bftanchor.template import Coin, Outpoint


class DeploymentError(ValueError):
    pass


# Jade keeps a multisig record under a name of at most 15 printable ASCII characters
# (33-126): MAX_MULTISIG_NAME_SIZE 16 with its NUL, and the NVS key-name limit (multisig.h).
DEVICE_NAME_MAX = 15


def device_wallet_name(tag: str, epoch: int) -> str:
    """`<tag>-e<epoch>` within DEVICE_NAME_MAX: the epoch is kept whole, the tag shortened
    (an epoch past 13 digits, never reached, keeps its last digits)."""
    suffix = f"e{epoch}"
    room = DEVICE_NAME_MAX - len(suffix) - 1
    if room < 1 or not tag:
        return suffix[-DEVICE_NAME_MAX:]
    return f"{tag[:room]}-{suffix}"


@dataclass(frozen=True)
class Deployment:
    chain: str
    magic: bytes
    genesis: Coin
    epoch0: EpochRecord
    handover_window: int

    def __post_init__(self) -> None:
        check_window(self.handover_window, self.epoch0)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "magic": self.magic.hex(),
            "genesis": {
                "txid": self.genesis.outpoint.txid,
                "vout": self.genesis.outpoint.vout,
                "value": self.genesis.value,
            },
            "epoch0": self.epoch0.to_json(),
            "handover_window": self.handover_window,
        }

    @property
    def device_tag(self) -> str:
        """Names this deployment on a signing device: the magic (as text when it is plain
        letters and digits, else its hex) and the genesis txid's first 4 hex digits, so two
        deployments sharing a magic still differ."""
        text = self.magic.decode("ascii", errors="replace")
        magic = text if text.isascii() and text.isalnum() else self.magic.hex()[:4]
        return f"{magic}{self.genesis.outpoint.txid[:4]}"

    def wallet_name(self, epoch: int) -> str:
        """The name epoch `epoch`'s multisig is registered under on a device."""
        return device_wallet_name(self.device_tag, epoch)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        if not isinstance(data, dict):
            raise DeploymentError("deployment file must hold a JSON object")
        if "handover_window" not in data:
            raise DeploymentError(
                'deployment file has no "handover_window" (the last W rounds of an epoch '
                "in which the handover falls); add it, e.g. \"handover_window\": 10"
            )
        window = data["handover_window"]
        if not isinstance(window, int) or isinstance(window, bool):
            raise DeploymentError(
                f'deployment file: "handover_window" must be an integer, not {window!r}'
            )
        missing = [k for k in ("chain", "magic", "genesis", "epoch0") if k not in data]
        if missing:
            raise DeploymentError(f"deployment file has no {', '.join(map(repr, missing))}")
        try:
            chain = str(data["chain"])
            network(chain)
        except ValueError as exc:
            raise DeploymentError(f"deployment file: {exc}") from exc
        try:
            magic = bytes.fromhex(data["magic"])
        except (TypeError, ValueError):
            magic = b""
        if len(magic) != 4:
            raise DeploymentError(
                f'deployment file: "magic" must be 4 bytes in hex (8 digits), not '
                f"{data['magic']!r}"
            )
        try:
            epoch0 = EpochRecord.from_json(data["epoch0"])
        except CheckpointError as exc:
            raise DeploymentError(f'deployment file: "epoch0": {exc}') from exc
        g = data["genesis"]
        try:
            outpoint = Outpoint.parse(f"{g['txid']}:{g['vout']}")
            value = g["value"]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise DeploymentError(
                'deployment file: "genesis" must be {"txid": hex64, "vout": int, '
                f'"value": sat > 0}}, not {g!r}'
            ) from None
        return cls(chain, magic, Coin(outpoint, value, epoch0.epoch), epoch0, window)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except DeploymentError as exc:
            raise DeploymentError(f"{path}: {exc}") from exc
        except OSError as exc:
            raise DeploymentError(
                f"cannot read deployment file {path}: {exc.strerror or exc}"
            ) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DeploymentError(f"deployment file {path} is not JSON: {exc}") from exc


def check_window(window: int, record: EpochRecord) -> None:
    """W >= 1 (a handover needs a round to fall in) and W < the epoch's length (a regular
    checkpoint needs rounds outside the window, so "at least one per epoch" can hold)."""
    length = record.end_round - record.start_round + 1
    if window < 1 or window >= length:
        raise DeploymentError(
            f'"handover_window" {window} must be at least 1 and less than epoch '
            f"{record.epoch}'s length of {length} rounds"
        )


def in_window(round_: int, record: EpochRecord, window: int) -> bool:
    """True for the rounds a handover must carry: end_round - W < round <= end_round."""
    return record.end_round - window < round_ <= record.end_round


def load_epochs(path: Path) -> list[EpochRecord]:
    """An epochs file: a JSON list of epoch records (or {"epochs": [...]}, as a devnet
    report has it). Parsing is all this does: certificates are the reader's to verify."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DeploymentError(f"cannot read epochs file {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeploymentError(f"epochs file {path} is not JSON: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("epochs")
    if not isinstance(data, list):
        raise DeploymentError(f"epochs file {path} must hold a list of epoch records")
    records = []
    for i, item in enumerate(data):
        try:
            records.append(EpochRecord.from_json(item))
        except CheckpointError as exc:
            raise DeploymentError(f"epochs file {path}, record #{i + 1}: {exc}") from exc
    return records
