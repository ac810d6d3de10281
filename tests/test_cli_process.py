"""The command line in real processes: what the in-process runner cannot show.

Most CLI tests call anchorcli.main.main in the test's process (anchorharness/clirun.py);
these start `python -m anchorcli` for real: that it starts at all, that a bad input
still ends as one line and a documented status with no traceback in a real process,
and that the in-process runner gives the same status and output as a process does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from anchorharness.cliappliance import CliAppliance
from anchorharness.clirun import run_cli_in_process, run_cli_process
from bftanchor.template import Coin, Outpoint

GENESIS = Coin(Outpoint("ef" * 32, 0), 5_000_000, 0)


def untimed(log: str) -> str:
    """Log lines without their leading time stamp."""
    return re.sub(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", log)


def test_help_runs_in_a_real_process() -> None:
    out = run_cli_process("--help")
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "appliance" in out.stdout
    assert out.stderr == ""


@pytest.mark.parametrize("argv, status", [
    (["bogus"], 2),
    (["appliance", "sign", "--config", "{missing}", "--request", "-"], 2),
    (["appliance", "status", "--config", "{dir}"], 2),
])
def test_bad_input_is_one_line_without_a_traceback_in_a_real_process(
    tmp_path: Path, argv: list[str], status: int
) -> None:
    args = [a.format(missing=tmp_path / "missing.toml", dir=tmp_path) for a in argv]
    out = run_cli_process(*args, stdin="")
    assert out.returncode == status, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    here = run_cli_in_process(*args, stdin="")
    assert (here.returncode, here.stdout, here.stderr) == (
        out.returncode, out.stdout, out.stderr)


def test_in_process_and_real_process_answer_a_sign_request_alike(tmp_path: Path) -> None:
    """The same request, refused by the policy, through both runners: same status, same
    verdict on stdout, same stderr, and both journaled."""
    world = CliAppliance(tmp_path, GENESIS, "process")
    qc = world.sim.qc(0, 5)
    request = {"psbt": "cHNidP8BAAoCAAAAAAAAAAAAAAA=", "qc": qc.to_json(),
               "records": [world.records[0].to_json()]}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    argv = ("appliance", "sign", "--config", str(world.config), "--request", str(path))
    real = run_cli_process(*argv)
    here = run_cli_in_process(*argv)
    assert real.returncode == here.returncode == 1, (real.stderr, here.stderr)
    assert "Traceback" not in real.stderr
    assert json.loads(real.stdout) == json.loads(here.stdout)
    assert not json.loads(real.stdout)["signed"]
    assert untimed(real.stderr) == untimed(here.stderr)  # the same lines, logging included
    assert [d for d, _ in world.decisions()][-2:] == ["refused", "refused"]
