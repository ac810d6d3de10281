"""An in-process fleet appliance as a directory `bft-anchor appliance` can read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import Fleet, seed_for

from bftanchor.secretfile import write_secret

CLI = [sys.executable, "-m", "anchorcli"]


def cli_dir(fleet: Fleet, vid: str, tag: str) -> Path:
    """The appliance's own directory (same journal file as the in-process one)."""
    d = fleet.tmp / f"cli-{vid}"
    if not d.exists():
        d.mkdir()
        fleet.deployment.save(d / "deployment.json")
        write_secret(d / "seed.txt", "hex:" + seed_for(f"{tag}/{vid}").hex() + "\n")
        (d / "appliance.toml").write_text(
            f'deployment = "deployment.json"\njournal = "{fleet.tmp / f"{vid}.sqlite"}"\n'
            f'validator_id = "{vid}"\n[signer]\nkind = "software"\nseed_file = "seed.txt"\n')
    return d / "appliance.toml"


def cli_sign(config: Path, request: dict, where: Path) -> tuple[int, dict]:
    """`bft-anchor appliance sign` on one request: (exit status, its JSON answer)."""
    where.write_text(json.dumps(request))
    res = subprocess.run([*CLI, "appliance", "sign", "--config", str(config), "--request",
                          str(where)], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout) if res.stdout.strip() else {}
