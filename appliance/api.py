"""The appliance's public API: what its console (tui/) and other front ends use.

A flat list of names over the appliance's modules, in the spirit of HWI's
commands.py: a front end imports from here and nowhere else in `appliance`, which
import-linter checks (pyproject.toml), so the modules behind it can be rearranged.
"""

from appliance.config import EXAMPLE, ApplianceConfig, ConfigError
from appliance.devices.capability import cannot_sign
from appliance.devices.profiles import FirmwareProfile, load_profiles, match_profile
from appliance.policy import Limits, Verdict, trusted_records
from appliance.runtime import make_signer, open_appliance
from appliance.serve import ApplianceService, control_call
from appliance.signers.base import Signer, SignerError
from appliance.signers.hwi import HWISigner
from appliance.signing import Appliance, SignOutcome

__all__ = [
    "EXAMPLE",
    "Appliance",
    "ApplianceConfig",
    "ApplianceService",
    "ConfigError",
    "FirmwareProfile",
    "HWISigner",
    "Limits",
    "SignOutcome",
    "Signer",
    "SignerError",
    "Verdict",
    "cannot_sign",
    "control_call",
    "load_profiles",
    "make_signer",
    "match_profile",
    "open_appliance",
    "trusted_records",
]
