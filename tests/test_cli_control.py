"""`bft-anchor appliance pending|approve|refuse|history` against a real control socket.

The appliance is the console's test world (HWI on the Jade emulator, manual approval);
the CLI talks to it through `ApplianceService.serve_control`, as an operator would.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_tui_world import World

from anchorcli.main import main

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture
def served(tmp_path: Path):
    w = World(tmp_path)
    sock = tmp_path / "control.sock"
    server = w.service.serve_control(sock)
    yield w, str(sock)
    server.shutdown()
    server.server_close()
    w.close()


def test_pending_and_history_read_as_tables_and_json(served, capsys) -> None:
    w, sock = served
    assert main(["appliance", "pending", "--control", sock]) == 0
    assert capsys.readouterr().out.strip() == "no request is waiting"
    w.submit(w.request(5))
    assert main(["appliance", "pending", "--control", sock]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:4] == ["id", "created", "(UTC)", "state"]
    assert ISO.search(row) and " 0 " in row and "600 sat" in row
    assert main(["appliance", "pending", "--control", sock, "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)["pending"]
    assert ISO.fullmatch(item["created"]) and item["summary"]["round"] == 5

    assert main(["appliance", "refuse", "--control", sock, item["id"], "--reason", "why"]) == 0
    assert capsys.readouterr().out.strip() == f"refused {item['id']} (journaled)"
    assert main(["appliance", "refuse", "--control", sock, item["id"]]) == 2  # not pending
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bft-anchor appliance refuse: refuse {item['id']}")

    assert main(["appliance", "history", "--control", sock]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["seq", "time", "(UTC)", "decision"]
    assert all(ISO.search(line) for line in lines[1:]) and len(lines) >= 2
    assert main(["appliance", "history", "--control", sock, "--json", "--limit", "1"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["history"]
    assert ISO.fullmatch(row["ts"]) and row["detail"]["reasons"] == ["refused by the operator: why"]


def test_approve_prints_the_txid_and_mode_says_what_it_did(served, capsys) -> None:
    w, sock = served
    w.submit(w.request(5))
    (item,) = w.service.queue.pending()
    assert main(["appliance", "approve", "--control", sock, item.id]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("signed ") and len(out.split()[1]) == 64
    assert main(["appliance", "mode", "--control", sock, "auto"]) == 0
    assert capsys.readouterr().out.strip() == "approval mode is now auto (journaled)"
    assert main(["appliance", "approve", "--control", sock, item.id]) == 2  # not pending
    assert "no pending request" in capsys.readouterr().err
