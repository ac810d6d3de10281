"""Why a device cannot sign an epoch's checkpoints: the one list of reasons that
`device check`, the console's device screen and `doctor` show an operator.

A device can sign epoch E when it holds one of E's keys (its fingerprint is among the
record's) and, for a hardware wallet, a firmware profile matches it and allows E's
multisig (firmware-profiles/, via check_capability).
"""

from __future__ import annotations

from appliance.devices.profiles import FirmwareProfile, check_capability
from bftanchor.epoch import EpochRecord

SCRIPT_TYPE = "wsh-sortedmulti"  # the default; each record names its own (record.script)


def cannot_sign(
    record: EpochRecord,
    fingerprint: str | None,
    *,
    hardware: bool = True,
    profile: FirmwareProfile | None = None,
    device: str = "",
    firmware: str | None = None,
) -> list[str]:
    """Reasons, for a person, why this device cannot sign `record`'s checkpoints; []
    means it can. `device` names it ("jade jade_simulator") when no profile matches."""
    reasons = []
    if fingerprint not in {v.fingerprint.hex() for v in record.validators}:
        reasons.append(f"the device ({fingerprint}) holds none of epoch {record.epoch}'s keys")
    if not hardware:
        return reasons
    if profile is None:
        reasons.append(f"no firmware profile matches {device} firmware {firmware}")
    else:
        reasons += check_capability(
            profile, record.script, record.n, firmware, account=record.epoch
        )
    return reasons
