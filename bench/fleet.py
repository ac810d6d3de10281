"""The benchmarks' names for the harness's fleet (anchorharness/fleet.py), which tests and
benchmarks share."""

from anchorharness.fleet import (
    CHAIN,
    FEE_RATE,
    MAGIC,
    ROUNDS_PER_EPOCH,
    WINDOW,
    BenchFleet,
    LocalPeer,
    mnemonic_for,
)

__all__ = [
    "CHAIN",
    "FEE_RATE",
    "MAGIC",
    "ROUNDS_PER_EPOCH",
    "WINDOW",
    "BenchFleet",
    "LocalPeer",
    "mnemonic_for",
]
