"""The appliance's TOML config: where its deployment, journal and keys are, and its limits.

Paths are relative to the config file, so an appliance directory can be moved whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.policy import Limits
from bftanchor.tomlfile import path_resolver, read_toml

EXAMPLE = """\
# bft-anchor appliance configuration.
# Paths are relative to this file.

# The deployment file (chain, magic, genesis coin, epoch 0 record): trusted as is.
deployment = "deployment.json"
# The anti-equivocation journal (SQLite). Never delete it: it is what stops this
# appliance from ever signing two checkpoints for one (epoch, round).
journal = "journal.sqlite"
# The journal's identity, bound by `appliance init`: the appliance refuses to start with
# a missing, empty, foreign or corrupt journal instead of silently starting a new one.
# journal_id = "..."
# Who may see the validator this appliance belongs to.
validator_id = "v0"
# auto: sign whatever the policy allows; manual: hold each request for an operator.
approval = "auto"

[signer]
# "software": a BIP39 mnemonic in seed_file (development and devnet only);
# "hwi": a hardware wallet found by fingerprint through HWI.
kind = "software"
seed_file = "seed.txt"
# fingerprint = "d8e50907"
# allow_emulators = false

[limits]
# The appliance refuses any fee above these, whatever the node says.
max_fee_sat = 100000
max_fee_rate = 200.0
"""


class ConfigError(ValueError):
    pass


SIGNER_KEYS = (
    "kind",
    "seed_file",
    "fingerprint",
    "device_type",
    "device_path",
    "allow_emulators",
    "password",  # the device's passphrase, handed to HWI
)
# Every key the appliance reads; any other is refused at start (bftanchor/tomlfile.py).
SCHEMA = {
    "deployment": None,
    "journal": None,
    "journal_id": None,
    "validator_id": None,
    "approval": None,
    "signer": dict.fromkeys(SIGNER_KEYS),
    "limits": {"max_fee_sat": None, "max_fee_rate": None},
}


@dataclass
class SignerConfig:
    kind: str = "software"
    seed_file: Path | None = None
    fingerprint: str | None = None
    device_type: str | None = None
    device_path: str | None = None
    allow_emulators: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ApplianceConfig:
    path: Path
    deployment: Path
    journal: Path
    validator_id: str
    approval: str
    signer: SignerConfig
    limits: Limits
    raw: dict[str, Any] = field(default_factory=dict)
    journal_id: str | None = None

    @classmethod
    def load(cls, path: Path) -> ApplianceConfig:
        path = Path(path)
        data = read_toml(path, ConfigError, "appliance config", SCHEMA)
        rel = path_resolver(path, ConfigError)

        try:
            s = data.get("signer", {})
            signer = SignerConfig(
                kind=str(s.get("kind", "software")),
                seed_file=rel(s["seed_file"], "signer.seed_file") if "seed_file" in s else None,
                fingerprint=s.get("fingerprint"),
                device_type=s.get("device_type"),
                device_path=s.get("device_path"),
                allow_emulators=bool(s.get("allow_emulators", False)),
                extra={k: v for k, v in s.items() if k not in SIGNER_KEYS[:-1]},
            )
            lim = data.get("limits", {})
            limits = Limits(
                max_fee_sat=int(lim.get("max_fee_sat", Limits.max_fee_sat)),
                max_fee_rate=float(lim.get("max_fee_rate", Limits.max_fee_rate)),
            )
            approval = str(data.get("approval", "auto"))
            if approval not in ("auto", "manual"):
                raise ConfigError(f"config {path}: approval must be auto or manual")
            if signer.kind not in ("software", "hwi"):
                raise ConfigError(f"config {path}: signer.kind must be software or hwi")
            if signer.kind == "software" and signer.seed_file is None:
                raise ConfigError(f"config {path}: a software signer needs signer.seed_file")
            return cls(
                path=path,
                deployment=rel(data.get("deployment"), "deployment"),
                journal=rel(data.get("journal"), "journal"),
                validator_id=str(data.get("validator_id", "")),
                approval=approval,
                signer=signer,
                limits=limits,
                raw=data,
                journal_id=_journal_id(data.get("journal_id"), path),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"config {path}: {exc}") from exc


def _journal_id(value: Any, path: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 32 or not all(
        c in "0123456789abcdef" for c in value
    ):
        raise ConfigError(f"config {path}: journal_id must be 32 lowercase hex digits "
                          f"(as `appliance init` writes it), found {value!r}")
    return value
