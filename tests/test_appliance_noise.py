"""Issue 12 item 6: link noise from a compromised node cannot grow the journal without
bound, and a full disk is reported as such, never as a traceback or "cannot rollback".

The noise test drives a real `bft-anchor appliance serve` on a pty for 60 s with
garbage bytes and well-formed sign requests that must be refused, as fast as the line
takes them; afterwards the journal and the log are each under 10 MB and the next
valid request is signed. The full-disk tests run in a private mount namespace on a
small tmpfs (`unshare -m`, as root), so nothing else on the machine fills up.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_appliance_link import exchange, make_req, served  # noqa: F401  (the fixture)

from bftanchor.link.messages import MsgType
from bftanchor.link.transport import LinkEndpoint

pytestmark = pytest.mark.integration

NOISE_SECONDS = float(os.environ.get("BFT_ANCHOR_NOISE_SECONDS", "60"))
MB = 1 << 20


def test_link_noise_keeps_journal_and_log_bounded(served):  # noqa: F811
    fleet = served.fleet
    served.start()
    ep = LinkEndpoint(served.master, frame_timeout=0.5)
    rng = random.Random(5)
    good = make_req(fleet, fleet.genesis, fleet.qc(5))
    sent = 0
    stop = threading.Event()
    replies = bytearray()

    def drain() -> None:  # the node's side reads whatever comes back, as fast as it comes
        while not stop.is_set():
            replies.extend(served.master.read(65536))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.monotonic() + NOISE_SECONDS
    rid = 1
    while time.monotonic() < deadline:
        rid += 1
        if rng.random() < 0.3:
            served.master.write(rng.randbytes(rng.randrange(1, 3000)))  # line noise
            continue
        # A well-formed request the policy must refuse: a QC signature garbled, each one
        # different (so neither the reply cache nor coalescing can absorb it).
        qc = json.loads(json.dumps(good.qc))
        if rid % 10:  # cheap to refuse: a QC that does not parse
            qc["ledger_commit_info"]["commit_state_id"] = secrets.token_hex(31) + "zz"
        else:  # costly: a QC whose signature does not verify
            k = sorted(qc["signatures"])[rid % len(qc["signatures"])]
            qc["signatures"][k] = secrets.token_hex(64)
        ep.write_frame(ep.encode(MsgType.SIGN_REQUEST, rid,
                                 {"psbt": good.psbt, "qc": qc, "records": good.records}))
        sent += 1
    stop.set()
    reader.join(5)
    assert sent > 20 * NOISE_SECONDS, sent  # the noise was real
    assert len(replies) > 100 * sent  # and it was answered (a refusal each)
    assert served.alive()
    # The next valid request is signed.
    reply = exchange(ep, ep.encode(MsgType.SIGN_REQUEST, 0x7FFF0001, good.payload), 0x7FFF0001,
                     timeout=30)
    assert reply.type == MsgType.SIGN_REPLY, reply.payload
    journal = sum(Path(f"{served.journal}{s}").stat().st_size
                  for s in ("", "-wal") if Path(f"{served.journal}{s}").exists())
    log = served.log.stat().st_size
    print(f"noise {NOISE_SECONDS:.0f}s: {sent} refused requests sent, journal {journal} B, "
          f"log {log} B")
    assert journal < 10 * MB and log < 10 * MB, (journal, log)
    refusals = [d for d in served.decisions() if d["decision"] == "refused"]
    assert 0 < len(refusals) < sent  # rate-limited ...
    assert any(d["detail"].get("suppressed_before") for d in refusals) or len(refusals) == sent
    assert served.stop() == 0


FULL_DISK = textwrap.dedent(r"""
    import json, os, subprocess, sys
    from pathlib import Path
    d = Path(sys.argv[1])
    cli = [sys.executable, "-m", "anchorcli"]
    req = json.loads((d / "request.json").read_text())
    def fill():
        with open(d / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
    out = {}
    # 1. While serving: the disk fills after the appliance opened its journal.
    sys.path.insert(0, sys.argv[2])
    from appliance.config import ApplianceConfig
    from appliance.runtime import open_appliance
    app = open_appliance(ApplianceConfig.load(d / "appliance.toml"))
    fill()
    res = app.handle_sign(req["psbt"], req["qc"], req["records"])
    out["serving"] = res.to_json()
    app.journal.close()
    # 2. Started on a full disk.
    st = subprocess.run([*cli, "appliance", "status", "--config", str(d / "appliance.toml")],
                        capture_output=True, text=True)
    out["start"] = {"rc": st.returncode, "stderr": st.stderr}
    sg = subprocess.run([*cli, "appliance", "sign", "--config", str(d / "appliance.toml"),
                         "--request", str(d / "request.json")], capture_output=True, text=True)
    out["sign"] = {"rc": sg.returncode, "stderr": sg.stderr}
    print(json.dumps(out))
""")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare for a private tmpfs")
def test_full_disk_is_reported_as_disk_full(served, tmp_path):  # noqa: F811
    fleet = served.fleet
    mnt = tmp_path / "small"
    mnt.mkdir()
    staging = tmp_path / "staging"
    shutil.copytree(served.root, staging)
    made = subprocess.run([sys.executable, "-m", "anchorcli", "appliance", "init",
                           str(staging / "x")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    # Bind a journal made by init into this appliance's config, as an operator has it.
    jid = next(line.split('"')[1] for line in (staging / "x" / "appliance.toml").read_text()
               .splitlines() if line.startswith("journal_id"))
    shutil.copy(staging / "x" / "journal.sqlite", staging / "journal.sqlite")
    with open(staging / "appliance.toml", "a") as f:
        f.write(f'journal_id = "{jid}"\n')
    # Move journal_id above the [signer] table (a top-level key).
    text = (staging / "appliance.toml").read_text().splitlines()
    top = [t for t in text if t.startswith("journal_id")]
    rest = [t for t in text if not t.startswith("journal_id")]
    (staging / "appliance.toml").write_text("\n".join(top + rest) + "\n")
    req = make_req(fleet, fleet.genesis, fleet.qc(5))
    (staging / "request.json").write_text(json.dumps(req.payload))
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    repo = str(Path(__file__).resolve().parent.parent)
    cmd = (f"mount -t tmpfs -o size=2m tmpfs {mnt} && cp -a {staging}/. {mnt}/ && "
           f"{sys.executable} {script} {mnt} {repo}")
    res = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    serving = out["serving"]
    assert not serving["signed"] and serving["reasons"][0].startswith("disk full"), serving
    assert "cannot rollback" not in json.dumps(serving)
    for step in ("start", "sign"):
        r = out[step]
        lines = r["stderr"].strip().splitlines()
        assert r["rc"] == 2 and len(lines) == 1 and "disk full" in lines[0], (step, r)
