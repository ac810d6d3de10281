"""The systemd units in deploy/systemd/ (issue 13, item 6): they parse, restart on
failure but not on a config error, run as the dedicated user, and are hardened; the
appliance's unit has no network at all."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"


def settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


@pytest.mark.parametrize("name", ["bft-anchor-node.service", "bft-anchor-appliance.service"])
def test_unit_is_hardened_and_restarts(name):
    s = settings(UNITS / name)
    assert s["User"] == ["bft-anchor"] and s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["2"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID",
                "ProtectKernelModules", "LockPersonality"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"] and s["CapabilityBoundingSet"] == [""]
    assert any("bft-anchor doctor" in v for v in s["ExecStartPre"])
    if "appliance" in name:
        assert s["PrivateNetwork"] == ["yes"] and "appliance serve" in s["ExecStart"][0]
    else:
        assert "node --config" in s["ExecStart"][0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify(tmp_path):
    exe = Path(sys.executable).parent / "bft-anchor"
    for unit in UNITS.glob("*.service"):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/usr/local/bin/bft-anchor", str(exe)))
        r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                           text=True, timeout=60)
        problems = [ln for ln in r.stderr.splitlines() if unit.name in ln]
        assert not problems, problems
