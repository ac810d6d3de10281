"""The audit against real chains on regtest: honest ones at every moment, chains that break
its rules, and epochs files that lie about who may move the coin."""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys

import pytest
from helpers import SCRIPT_IDS, SCRIPT_PAIRS, Fleet

from anchornode.audit import AuditInputError, audit_chain
from bftanchor.bftsig import sign_compact
from bftanchor.epoch import SCRIPT_TR, SCRIPT_WSH
from bftanchor.template import TOPUP_SEQUENCE

pytestmark = pytest.mark.integration


def audit(fleet, records=None, deployment=None):
    recs = list(fleet.records.values()) if records is None else records
    return audit_chain(fleet.node.rpc, deployment or fleet.deployment, recs)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "anchorcli", "audit", *args],
                          capture_output=True, text=True, timeout=60)


def node_args(node):
    return ["--rpc", node.url, "--rpc-cookie", str(node.datadir / "regtest" / ".cookie")]


def one_line(out):
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bft-anchor audit: "), out.stderr
    return lines[0]


# --- an honest chain, audited at every moment --------------------------------------------

@pytest.mark.parametrize("scripts", SCRIPT_PAIRS + [(SCRIPT_WSH, SCRIPT_TR)],
                         ids=SCRIPT_IDS + ["wsh-to-tr"])
def test_honest_chain_passes_at_every_moment(regtest, tmp_path, scripts):
    # epoch 0: rounds 0..99, window 90..99; on wsh, tapscript and a handover between them
    fleet = Fleet(regtest, tmp_path, tag=f"honest-{'-'.join(scripts)}", scripts=scripts)
    assert audit(fleet).ok and audit(fleet).coin_epoch == 0  # no checkpoint yet
    txids = []
    for r in (5, 10):
        txids.append(fleet.checkpoint(fleet.qc(r)))
        assert audit(fleet).ok, audit(fleet).violations
    # The handover in the mempool: the audit sees the confirmed chain, which is fine.
    txids.append(fleet.checkpoint(fleet.qc(90), handover=True, mine=False))
    assert audit(fleet).ok and audit(fleet).coin_epoch == 0
    fleet.node.mine(1)
    # Right after the handover epoch 1 holds the coin and has no checkpoint yet: no alarm.
    report = audit(fleet)
    assert report.ok, report.violations
    assert report.coin_epoch == 1 and report.coin == f"{txids[-1]}:1"
    txids.append(fleet.checkpoint(fleet.qc(105, epoch=1)))
    report = audit(fleet)
    assert report.ok, report.violations
    assert [c.txid for c in report.checkpoints] == txids
    assert [c.handover for c in report.checkpoints] == [False, False, True, False]
    assert report.records[0].startswith("trusted") and report.records[1].startswith("verified")


# --- chains that break the rules (keys signing directly, as a rogue quorum would) ---------

def test_two_checkpoints_in_one_block(regtest, tmp_path):
    # The coin's one-block relative lock forbids this; a chain made without it (keys
    # signing directly, the old nSequence) must still be caught.
    fleet = Fleet(regtest, tmp_path, tag="one-block")
    fleet.checkpoint(fleet.qc(5), mine=False)
    child = fleet.forged(fleet.qc(10), TOPUP_SEQUENCE)
    fleet.node.rpc.sendrawtransaction(child.serialize().hex())
    fleet.node.mine(1)
    report = audit(fleet)
    assert any("a second checkpoint in block" in v for v in report.violations)
    assert any("input 0 nSequence is 0xfffffffd, expected 0x1" in v for v in report.violations)


@pytest.mark.parametrize("round_, handover, expected", [
    (85, True, "early handover at round 85, outside epoch 0's handover window 90..99"),
    (100, True, "late handover at round 100, outside epoch 0's handover window 90..99"),
    (95, False, "a regular checkpoint at round 95, inside epoch 0's handover window 90..99"),
])
def test_handover_window(regtest, tmp_path, round_, handover, expected):
    fleet = Fleet(regtest, tmp_path, tag=f"window-{round_}")
    fleet.checkpoint(fleet.qc(5))
    tx = fleet.forged(fleet.qc(round_), 1, handover=handover)
    fleet.node.rpc.sendrawtransaction(tx.serialize().hex())
    fleet.node.mine(1)
    report = audit(fleet)
    assert any(expected in v for v in report.violations), report.violations


def test_handover_at_the_windows_edges_passes(regtest, tmp_path):
    fleet = Fleet(regtest, tmp_path, tag="edges", window=10)
    fleet.checkpoint(fleet.qc(89))  # the last round before the window: a regular one
    fleet.checkpoint(fleet.qc(99), handover=True)  # the epoch's last round
    report = audit(fleet)
    assert report.ok, report.violations


# --- epochs files that lie ------------------------------------------------------------------

@pytest.fixture(scope="module")
def handed_over(regtest, tmp_path_factory):
    """A chain that hands over to epoch 1, and the means to forge epoch 1's record."""
    fleet = Fleet(regtest, tmp_path_factory.mktemp("forged"), tag="forged-records")
    fleet.checkpoint(fleet.qc(5))
    fleet.checkpoint(fleet.qc(92), handover=True)
    fleet.checkpoint(fleet.qc(101, epoch=1))
    assert audit(fleet).ok
    return fleet


def certified_by(fleet, record, count):
    digest = record.certificate_digest()
    return record.with_certificate(
        {v.id: sign_compact(v.bft_secret, digest) for v in fleet.sim.validators[:count]})


FORGERIES = {
    "k-1 signers": (lambda f, r: certified_by(f, r, 2),
                    "certificate has 2 signature(s), epoch 0's quorum is 3"),
    "empty certificate": (lambda f, r: r.with_certificate({}),
                          "certificate has 0 signature(s)"),
    "garbage signatures": (
        lambda f, r: r.with_certificate({v.id: secrets.token_bytes(64)
                                         for v in f.sim.validators}),
        "certificate signature of v0"),
    "certified by strangers": (
        lambda f, r: r.with_certificate({"mallory": secrets.token_bytes(64)} | r.certificate),
        "certifier mallory is not in epoch 0"),
    "end_round altered after certification": (
        lambda f, r: dataclasses.replace(r, end_round=r.end_round + 50),
        "certificate signature of"),
}


@pytest.mark.parametrize("name", FORGERIES)
def test_forged_record_is_refused_with_its_reason(handed_over, name):
    forge, reason = FORGERIES[name]
    fleet = handed_over
    forged = forge(fleet, fleet.records[1])
    report = audit(fleet, [fleet.records[0], forged])
    assert not report.ok
    assert any(v.startswith("epoch 1's record is refused") and reason in v
               for v in report.violations), report.violations
    # The handover to epoch 1 is then not one the audit accepts.
    assert any("pays the coin to a script that is not epoch 0's multisig; epoch 1's record "
               "is refused" in v for v in report.violations)


def test_no_certificate_at_all_is_refused(handed_over, tmp_path):
    fleet = handed_over
    data = fleet.records[1].to_json()
    del data["certificate"]
    dep, epochs = tmp_path / "deployment.json", tmp_path / "epochs.json"
    fleet.deployment.save(dep)
    epochs.write_text(json.dumps([fleet.records[0].to_json(), data]))
    out = cli(*node_args(fleet.node), "--deployment", str(dep), "--epochs", str(epochs))
    assert out.returncode == 1, out.stderr
    assert "epoch 1's record is refused" in out.stdout and "0 signature(s)" in out.stdout


def test_epoch_zero_is_the_deployments_not_the_epochs_files(handed_over):
    fleet = handed_over
    other = dataclasses.replace(fleet.records[0], end_round=fleet.records[0].end_round + 1)
    report = audit(fleet, [other, fleet.records[1]])
    assert "the epochs file's record for epoch 0 differs from the deployment file's" in \
        report.violations[0]


def test_missing_record_is_named_not_called_a_violation(handed_over, tmp_path):
    fleet = handed_over
    report = audit(fleet, [fleet.records[0]])
    assert not report.violations
    assert len(report.missing) == 1 and "no record for epoch 1" in report.missing[0]
    dep = tmp_path / "deployment.json"
    fleet.deployment.save(dep)
    out = cli(*node_args(fleet.node), "--deployment", str(dep))
    assert out.returncode == 2
    assert "the epochs file has no record for epoch 1" in one_line(out)


def test_cli_passes_the_honest_chain(handed_over, tmp_path):
    fleet = handed_over
    dep, epochs = tmp_path / "deployment.json", tmp_path / "epochs.json"
    fleet.deployment.save(dep)
    epochs.write_text(json.dumps([r.to_json() for r in fleet.records.values()]))
    out = cli(*node_args(fleet.node), "--deployment", str(dep), "--epochs", str(epochs),
              "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["coin_epoch"] == 1 and len(report["checkpoints"]) == 3


# --- the node and the inputs: exit 2 with one line naming them ---------------------------

def test_unusable_node_is_named(handed_over, tmp_path):
    fleet = handed_over
    dep = tmp_path / "deployment.json"
    fleet.deployment.save(dep)
    down = cli("--rpc", "http://127.0.0.1:9", "--deployment", str(dep))
    assert down.returncode == 2 and "node http://127.0.0.1:9" in one_line(down)
    refused = cli("--rpc", fleet.node.url, "--rpc-user", "x", "--rpc-password", "wrong",
                  "--deployment", str(dep))
    line = one_line(refused)
    assert refused.returncode == 2 and "refused the RPC credentials" in line
    assert "wrong" not in line  # the password is not echoed
    other = dataclasses.replace(fleet.deployment, chain="litecoin-test")
    other.save(tmp_path / "test.json")
    chain = cli(*node_args(fleet.node), "--deployment", str(tmp_path / "test.json"))
    assert chain.returncode == 2 and "is on chain 'regtest'" in one_line(chain)


@pytest.fixture(scope="module")
def saved(handed_over, tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    handed_over.deployment.save(d / "deployment.json")
    return d


BAD_INPUTS = {
    "missing deployment": (["--deployment", "{d}/nope.json"], "nope.json"),
    "deployment is a directory": (["--deployment", "{d}"], "cannot read deployment file"),
    "deployment not JSON": (["--deployment", "{d}/garbage"], "is not JSON"),
    "deployment without the window": (["--deployment", "{d}/old.json"],
                                      'no "handover_window"'),
    "deployment with a bad magic": (["--deployment", "{d}/magic.json"], '"magic" must be'),
    "deployment with a bad genesis": (["--deployment", "{d}/genesis.json"],
                                      '"genesis" must be'),
    "missing epochs": (["--deployment", "{d}/deployment.json", "--epochs", "{d}/nope"],
                       "cannot read epochs file"),
    "epochs not JSON": (["--deployment", "{d}/deployment.json", "--epochs", "{d}/garbage"],
                        "is not JSON"),
    "epochs not a list": (["--deployment", "{d}/deployment.json", "--epochs", "{d}/obj.json"],
                          "must hold a list of epoch records"),
    "epochs with a non-hex certificate": (
        ["--deployment", "{d}/deployment.json", "--epochs", "{d}/hex.json"], "record #2"),
    "malformed cookie": (["--deployment", "{d}/deployment.json", "--rpc-cookie", "{d}/garbage"],
                         "does not hold USER:PASSWORD"),
    "negative height": (["--deployment", "{d}/deployment.json", "--from-height", "-4"],
                        "-4"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(handed_over, saved, name):
    d = saved
    dep = json.loads((d / "deployment.json").read_text())
    (d / "garbage").write_text("{not json")
    (d / "old.json").write_text(json.dumps({k: v for k, v in dep.items()
                                            if k != "handover_window"}))
    (d / "magic.json").write_text(json.dumps(dep | {"magic": "zz"}))
    (d / "genesis.json").write_text(json.dumps(dep | {"genesis": {"txid": "ab", "vout": 0}}))
    (d / "obj.json").write_text(json.dumps({"epochs": 3}))
    rec1 = handed_over.records[1].to_json()
    rec1["certificate"] = {"v0": "not hex"}
    (d / "hex.json").write_text(json.dumps([dep["epoch0"], rec1]))
    args, expected = BAD_INPUTS[name]
    out = cli(*node_args(handed_over.node), *[a.format(d=d) for a in args])
    assert out.returncode == 2, (out.stdout, out.stderr)
    line = one_line(out)
    assert expected in line and ("--from-height" in line if "height" in name else True)
    assert not out.stdout


def test_from_height_is_the_genesis_block(handed_over):
    fleet = handed_over
    rpc = fleet.node.rpc
    height = rpc.getblockheader(
        rpc.getrawtransaction(fleet.genesis.outpoint.txid, True)["blockhash"])["height"]
    report = audit_chain(rpc, fleet.deployment, list(fleet.records.values()), height)
    assert report.ok and len(report.checkpoints) == 3
    with pytest.raises(AuditInputError, match=f"--from-height {height + 1}: the genesis "
                       "transaction .* is not in that block"):
        audit_chain(rpc, fleet.deployment, list(fleet.records.values()), height + 1)
    with pytest.raises(AuditInputError, match="--from-height 999999"):
        audit_chain(rpc, fleet.deployment, list(fleet.records.values()), 999999)


def test_genesis_value_must_match_the_deployment(handed_over):
    fleet = handed_over
    g = fleet.deployment.genesis
    other = dataclasses.replace(fleet.deployment, genesis=dataclasses.replace(g, value=g.value + 1))
    report = audit(fleet, deployment=other)
    assert f"genesis {g.outpoint} holds {g.value} sat, the deployment says {g.value + 1}" in \
        report.violations


@pytest.mark.parametrize("url, expected", [
    ("ftp://x", "the scheme must be http or https"),
    ("127.0.0.1", "no port"),
    ("http://u:secret@127.0.0.1:99999", "not a URL"),
    ("http://[::1", "not a URL"),
])
def test_bad_rpc_url_is_one_line_exit_2(saved, url, expected):
    out = cli("--rpc", url, "--deployment", str(saved / "deployment.json"))
    line = one_line(out)
    assert out.returncode == 2 and expected in line and "secret" not in line
