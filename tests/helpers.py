"""The tests' names for the harness (anchorharness/): kept so tests import one place."""

from anchorharness.fleet import (
    MAGIC,
    SCRIPT_IDS,
    SCRIPT_PAIRS,
    Fleet,
    LocalPeer,
    seed_for,
    twin_qc,
    v0_signature,
)

__all__ = [
    "MAGIC",
    "SCRIPT_IDS",
    "SCRIPT_PAIRS",
    "Fleet",
    "LocalPeer",
    "seed_for",
    "twin_qc",
    "v0_signature",
]
