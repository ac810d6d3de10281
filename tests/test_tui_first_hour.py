"""A new operator's first hour in a real terminal (tests/first_hour.py), start to end:
`bft-anchor devnet --datadir D`, then validator v0's appliance from D served with
`--approval manual` on a pty, the console attached in tmux, one request approved, one
refused with a reason, the ceremony with a wrong fingerprint first, the device's named
wallets, the handover approved; every step's screen saved as SVG (the committed ones are in
docs/screens/, written by `python tests/first_hour.py`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from first_hour import first_hour
from test_tui_tmux import Terminal, _tmux


@pytest.mark.integration  # the devnet starts a regtest node
@pytest.mark.slow  # a devnet and a whole scripted hour in tmux: `-m "not slow"` leaves it out
def test_first_hour_of_a_new_operator(tmp_path: Path) -> None:
    term = Terminal(_tmux(), f"bft-anchor-first-hour-{os.getpid()}")
    try:
        saved = first_hour(tmp_path / "work", tmp_path / "screens", term)
    finally:
        term.close()
    names = [p.name for p in saved]
    assert len(names) == 11 and names[0] == "first-hour-00-devnet.svg", names
    assert "fingerprint-mismatch" in names[6] and "device-wallets" in names[8], names
    for path in saved:
        svg = path.read_text()
        assert svg.startswith("<svg") and "bft-anchor" in svg
