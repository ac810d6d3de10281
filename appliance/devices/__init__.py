"""Signing-device knowledge: firmware profiles and udev rules.

Offline-half code: imports nothing from the online half (node, pow).
"""

from appliance.devices.profiles import (
    FirmwareProfile,
    ProfileError,
    check_capability,
    compare_versions,
    load_profiles,
    match_profile,
)

__all__ = [
    "FirmwareProfile",
    "ProfileError",
    "check_capability",
    "compare_versions",
    "load_profiles",
    "match_profile",
]
