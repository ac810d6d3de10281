"""The README's first command, end to end: a devnet on a real regtest node, then the
standalone audit against the same chain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from embit.transaction import Transaction

from anchornode.pow.regtest import RegtestNode
from bftanchor.payload import Payload

pytestmark = pytest.mark.integration  # every devnet starts a PoW node


def run(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "anchorcli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def devnet(tmp_path_factory):
    datadir = tmp_path_factory.mktemp("devnet")
    out = run("devnet", "--json", "--datadir", str(datadir))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout), datadir


def test_report_format_and_audit(devnet):
    report, _ = devnet
    assert set(report) == {"chain", "magic", "genesis", "epochs", "checkpoints", "audit"}
    assert report["chain"] in ("litecoin-regtest", "bitcoin-regtest")
    assert report["magic"] == "42465441"
    assert report["audit"] == {"ok": True, "violations": []}
    assert [e["epoch"] for e in report["epochs"]] == [0, 1, 2]
    cps = report["checkpoints"]
    assert {c["epoch"] for c in cps} == {0, 1, 2}
    assert sum(c["handover"] for c in cps) == 2
    heights = [c["height"] for c in cps]
    assert heights == sorted(set(heights)), "at most one checkpoint per block"
    assert all(a["initiator"] != b["initiator"] for a, b in zip(cps, cps[1:], strict=False))
    for c in cps:
        assert set(c) == {
            "epoch",
            "round",
            "commit_state_id",
            "txid",
            "raw_tx",
            "block_hash",
            "height",
            "initiator",
            "handover",
        }
        tx = Transaction.from_string(c["raw_tx"])
        assert tx.txid().hex() == c["txid"]
        p = Payload.from_script(tx.vout[0].script_pubkey.data)
        assert (p.epoch, p.round, p.commit_state_id.hex()) == (
            c["epoch"],
            c["round"],
            c["commit_state_id"],
        )
    for c in (c for c in cps if c["handover"]):
        end = next(e["end_round"] for e in report["epochs"] if e["epoch"] == c["epoch"])
        assert c["round"] < end


def test_every_signature_came_through_hwi_from_an_emulator(devnet):
    report, datadir = devnet
    for v in report["epochs"][0]["validators"]:
        vdir = datadir / "validators" / v["id"]
        assert 'kind = "hwi"' in (vdir / "appliance.toml").read_text()
        # The emulator registered each epoch's multisig (HWI's displayaddress) before signing.
        state = json.loads((vdir / "jade-state.json").read_text())
        assert len(state["multisigs"]) == len(report["epochs"])
        log = (datadir / f"appliance-{v['id']}.log").read_text()
        assert log.count("registered epoch") == len(report["epochs"])


def test_standalone_audit_on_the_kept_datadir(devnet):
    report, datadir = devnet
    assert (datadir / "deployment.json").exists() and (datadir / "epochs.json").exists()
    node = RegtestNode(datadir=datadir / "pow").start()
    try:
        cookie = datadir / "pow" / "regtest" / ".cookie"

        def audit(epochs: Path, *more: str) -> subprocess.CompletedProcess:
            return run("audit", "--rpc", node.url, "--rpc-cookie", str(cookie),
                       "--deployment", str(datadir / "deployment.json"), "--epochs", str(epochs),
                       *more)

        out = audit(datadir / "epochs.json", "--json")
        assert out.returncode == 0, out.stderr
        audited = json.loads(out.stdout)
        assert [c["txid"] for c in audited["checkpoints"]] == [
            c["txid"] for c in report["checkpoints"]
        ]
        table = audit(datadir / "epochs.json")
        assert "audit OK" in table.stdout
        # Audit with the wrong records: the coin is paid to scripts it does not know.
        epochs = json.loads((datadir / "epochs.json").read_text())
        bad = datadir / "bad-epochs.json"
        bad.write_text(json.dumps([epochs[0], epochs[2] | {"epoch": 1}]))
        out = audit(bad)
        assert out.returncode != 0
    finally:
        node.stop()


@pytest.mark.slow
def test_devnet_with_node_processes(tmp_path):
    out = run("devnet", "--nodes", "--epochs", "2", "--json", "--datadir", str(tmp_path),
              timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["audit"]["ok"], report["audit"]
    cps = report["checkpoints"]
    assert {c["epoch"] for c in cps} == {0, 1} and sum(c["handover"] for c in cps) == 1
    # The node processes made them: each was broadcast by one of the validators.
    assert all(c["initiator"] in {"v0", "v1", "v2", "v3"} for c in cps)
    assert len({c["initiator"] for c in cps}) > 1


def test_the_deployment_is_built_as_operators_build_theirs(devnet):
    """Issue 13 item 8: shares from the devices, the coordinator's draft, the genesis coin
    checked on the node; and a --datadir holding a deployment is refused, not reused."""
    from bftanchor.deployment import Deployment
    from bftanchor.share import Draft

    report, datadir = devnet
    draft = Draft.load(datadir / "deployment-draft.json")
    deployment = Deployment.load(datadir / "deployment.json")
    assert deployment.epoch0 == draft.epoch0 and report["epochs"][0] == draft.epoch0.to_json()
    assert deployment.handover_window == draft.handover_window
    shown = [json.loads(run("deploy", "show", str(f), "--json").stdout)
             for f in (datadir / "deployment-draft.json", datadir / "deployment.json")]
    assert shown[0] == shown[1]
    again = run("devnet", "--datadir", str(datadir), timeout=60)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "deployment" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_resume_continues_a_kept_devnet(tmp_path):
    """`--resume` goes on from the kept chain: same deployment, validators and journals,
    rounds above the last checkpoint's, a handover into one more epoch; audited whole."""
    fast = ["--signer", "software", "--appliances", "inprocess", "--rounds-per-epoch", "12",
            "--interval", "3", "--handover-margin", "2", "--json", "--datadir", str(tmp_path)]
    first = run("devnet", "--epochs", "1", *fast)
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads(first.stdout)
    deployment = (tmp_path / "deployment.json").read_bytes()
    seeds = {p: p.read_bytes() for p in tmp_path.glob("validators/*/seed.txt")}
    assert run("devnet", "--epochs", "1", *fast).returncode == 2  # not without --resume
    again = run("devnet", "--epochs", "1", "--resume", *fast)
    assert again.returncode == 0, again.stderr[-2000:]
    after = json.loads(again.stdout)
    assert after["audit"] == {"ok": True, "violations": []}
    assert after["genesis"] == before["genesis"]
    kept = [c["txid"] for c in before["checkpoints"]]
    assert [c["txid"] for c in after["checkpoints"]][: len(kept)] == kept
    assert [c["epoch"] for c in after["checkpoints"] if c["handover"]] == [0]
    assert max(c["epoch"] for c in after["checkpoints"]) == 1
    assert (tmp_path / "deployment.json").read_bytes() == deployment
    assert {p: p.read_bytes() for p in seeds} == seeds
    empty = run("devnet", "--resume", "--datadir", str(tmp_path / "nothing"), timeout=60)
    assert empty.returncode == 2 and "Traceback" not in empty.stderr
    assert "nothing to resume" in empty.stderr and not (tmp_path / "nothing").exists()
