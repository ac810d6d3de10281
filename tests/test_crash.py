"""A real signing process killed between the journal write and the reply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from embit.psbt import PSBT
from helpers import Fleet, seed_for, twin_qc

from appliance.signing import CRASH_ENV
from bftanchor.secretfile import write_secret


@pytest.fixture
def setup(regtest, tmp_path):
    fleet = Fleet(regtest, tmp_path / "fleet", tag="crash")
    fleet.deployment.save(tmp_path / "deployment.json")
    write_secret(tmp_path / "seed.txt", "hex:" + seed_for("crash/v0").hex() + "\n")
    (tmp_path / "appliance.toml").write_text(
        'deployment = "deployment.json"\njournal = "journal.sqlite"\nvalidator_id = "v0"\n'
        '[signer]\nkind = "software"\nseed_file = "seed.txt"\n'
    )
    return fleet, tmp_path


def sign(tmp_path, request: dict, crash_at: str | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "anchorcli",
            "appliance",
            "sign",
            "--config",
            str(tmp_path / "appliance.toml"),
            "--request",
            str(path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def as_request(fleet, proposal, qc) -> dict:
    b64, qj, recs = fleet.request(proposal.psbt, qc)
    return {"psbt": b64, "qc": qj, "records": recs}


def my_sig(reply_psbt: str) -> bytes:
    (sig,) = PSBT.from_string(reply_psbt).inputs[0].partial_sigs.values()
    return sig


@pytest.mark.parametrize("crash_at", ["after-journal", "after-sign"])
def test_killed_before_reply_then_same_answer_and_no_conflict(setup, crash_at):
    fleet, tmp = setup
    qc = fleet.qc(5)
    req = as_request(fleet, fleet.propose(qc), qc)
    dead = sign(tmp, req, crash_at=crash_at)
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    assert dead.stdout == ""  # nothing left the process

    first = sign(tmp, req)
    assert first.returncode == 0, first.stderr
    reply = json.loads(first.stdout)
    assert reply["signed"]
    # After a crash past the signature the answer comes from the journal, not the signer.
    assert reply["from_journal"] is (crash_at == "after-sign")
    again = json.loads(sign(tmp, req).stdout)
    assert again["from_journal"] and my_sig(again["psbt"]) == my_sig(reply["psbt"])

    # The same signature the in-process appliance with the same key makes (RFC 6979).
    reference = fleet.appliances["v0"].handle_sign(req["psbt"], req["qc"], req["records"])
    assert my_sig(reference.psbt) == my_sig(reply["psbt"])

    # A conflicting payload for the same (epoch, round) is refused after the restart.
    from bftanchor.qc import QC

    tq = twin_qc(fleet, QC.from_json(req["qc"]), "66" * 32)
    conflict = sign(tmp, as_request(fleet, fleet.propose(tq), tq))
    assert conflict.returncode == 1
    assert "equivocation" in " ".join(json.loads(conflict.stdout)["reasons"])


def test_bad_config_is_a_clear_usage_error(tmp_path):
    (tmp_path / "appliance.toml").write_text(
        'deployment = 3\n[signer]\nkind = "software"\nseed_file = "s"\n'
    )
    out = sign(tmp_path, {})
    assert out.returncode == 2
    assert "deployment must be a path string" in out.stderr
