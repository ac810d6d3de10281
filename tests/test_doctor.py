"""`bft-anchor doctor` finds each broken set-up and names its fix (issue 13, item 4).

One good set-up is built with the operators' own commands (shares, draft, genesis on a
real regtest node, install) with three peer nodes answering the real peer protocol and
this validator's appliance on a serial line; each test breaks one thing and asserts
the doctor reports exactly that, with its fix, and exits 1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anchornode.config import NodeConfig
from anchornode.pow.regtest import RegtestNode, free_port
from anchornode.procutil import die_with_parent
from anchornode.qcsource import open_source
from anchornode.service import NodeService
from appliance.emulator.jade import JadeEmulator
from bftanchor.deployment import Deployment
from bftanchor.publish import Publisher
from tests.deploy_helpers import (
    NullModem,
    draft_args,
    edit_json,
    make_team,
    node_toml,
    run,
    vout_to,
)

pytestmark = pytest.mark.integration


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = RegtestNode(root / "pow").start()
        wallet = self.node.create_wallet("coordinator")
        self.node.mine(101)
        shares = make_team(root)
        draft = root / "deployment-draft.json"
        assert run(*draft_args(shares, draft))[0] == 0
        address = json.loads(run("deploy", "show", draft, "--json")[1])["address"]
        txid = wallet.sendtoaddress(address, 0.05)
        self.node.mine(1)
        vout = vout_to(self.node, txid, address)
        self.deployment = root / "deployment.json"
        assert run("deploy", "genesis", "--draft", draft, "--rpc", self.node.url,
                   "--rpc-cookie", self.cookie, "--outpoint", f"{txid}:{vout}",
                   "--out", self.deployment)[0] == 0
        self.fingerprint = json.loads(run("deploy", "show", self.deployment,
                                          "--json")[1])["wallet_fingerprint"]
        for i in range(4):
            rc, _, err = run("appliance", "install", "--config", self.appliance_toml(i),
                             "--deployment", self.deployment, "--fingerprint", self.fingerprint)
            assert rc == 0, err
        Publisher(root / "bft", Deployment.load(self.deployment).epoch0)
        self.ports = {f"v{i}": free_port() for i in range(4)}
        self.modem = NullModem()
        self.peers: list[NodeService] = []
        for i in range(4):
            op = root / f"op{i}"
            shutil.copy(self.deployment, op / "deployment.json")
            (op / "node.toml").write_text(self.node_text(i))
        for i in (1, 2, 3):
            cfg = NodeConfig.load(root / f"op{i}" / "node.toml")
            svc = NodeService(cfg, Deployment.load(cfg.deployment),
                              bytes.fromhex(cfg.bft_key_file.read_text().strip()),
                              None, [], open_source(cfg.qc_source))  # ping never asks it
            svc.start_server()
            self.peers.append(svc)
        log = open(root / "appliance0.log", "ab")  # noqa: SIM115 (the child owns it)
        self.appliance = subprocess.Popen(
            [sys.executable, "-m", "anchorcli", "appliance", "serve", "--config",
             str(self.appliance_toml(0)), "--link", self.modem.a],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        log.close()

    @property
    def cookie(self) -> Path:
        return self.node.datadir / "regtest" / ".cookie"

    def appliance_toml(self, i: int) -> Path:
        return self.root / f"op{i}" / "appliance" / "appliance.toml"

    def node_text(self, i: int, **kw: object) -> str:
        args: dict = dict(
            vid=f"v{i}", listen=f"127.0.0.1:{self.ports[f'v{i}']}",
            metrics=f"127.0.0.1:{free_port()}",
            peers={v: f"127.0.0.1:{p}" for v, p in self.ports.items() if v != f"v{i}"},
            pow_url=self.node.url, cookie=self.cookie,
            link=self.modem.b if i == 0 else "/dev/null",
        )
        args.update(kw)
        return node_toml(**args)

    def variant(self, name: str, **kw: object) -> Path:
        path = self.root / "op0" / f"{name}.toml"
        path.write_text(self.node_text(0, **kw))
        return path

    def close(self) -> None:
        for svc in self.peers:
            svc.shutdown()
        self.appliance.terminate()
        self.appliance.wait(10)
        self.modem.close()
        self.node.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("doctor"))
    yield s
    s.close()


def doctor(*argv: object) -> tuple[int, list[dict], str]:
    rc, out, err = run("doctor", *argv, "--json")
    assert "Traceback" not in err
    findings = json.loads(out)["findings"] if out.strip() else []
    return rc, findings, err


def only_failure(findings: list[dict], check: str, *fix_words: str) -> dict:
    failed = [f for f in findings if f["status"] == "FAIL"]
    assert len(failed) == 1, failed
    f = failed[0]
    assert check in f["check"], f
    for w in fix_words:
        assert w in f["fix"], (w, f)
    return f


def doctor_fails(flag: str, config: object, check: str, *fix_words: str) -> dict:
    """`doctor flag config` exits 1 with one failure, of `check`, whose fix names each of
    `fix_words`; that finding."""
    rc, findings, _ = doctor(flag, config)
    assert rc == 1
    return only_failure(findings, check, *fix_words)


def test_a_good_setup_passes(site):
    rc, findings, err = doctor("--node", site.root / "op0" / "node.toml")
    assert rc == 0, findings
    checks = {f["check"] for f in findings if f["status"] == "ok"}
    for want in ("deployment", "bft key", "genesis coin", "link"):
        assert want in checks, checks
    assert sum(1 for c in checks if c.startswith("peer v")) == 3
    assert any("-txindex" in c for c in checks)
    assert any("-mempoolreplacement" in c for c in checks)


def test_missing_deployment(site):
    doctor_fails("--node", site.variant("nodep", deployment="nowhere.json"),
                 "deployment", "copy the deployment file", "deploy show")


def test_validator_id_not_in_epoch0(site):
    rc, f, _ = doctor("--node", site.variant("vid", vid="v9"))
    # v9 is not in epoch 0, and v0 is then missing from its own peers list.
    failed = [x for x in f if x["status"] == "FAIL"]
    assert rc == 1 and any(x["check"] == "validator_id" and "validator_id in node.toml"
                           in x["fix"] for x in failed)


def test_bft_key_of_another_validator(site):
    doctor_fails("--node", site.variant("key", bft_key="../op1/bft.key"), "bft key", "share")


def test_bft_key_readable_by_others(site, tmp_path):
    key = site.root / "op0" / "loose.key"
    key.write_text((site.root / "op0" / "bft.key").read_text())
    key.chmod(0o644)
    doctor_fails("--node", site.variant("loose", bft_key="loose.key"),
                 "bft key permissions", "chmod 600")


def test_peer_id_not_a_validator(site):
    peers = {"v1": f"127.0.0.1:{site.ports['v1']}", "v2": f"127.0.0.1:{site.ports['v2']}",
             "v3": f"127.0.0.1:{site.ports['v3']}", "v7": "127.0.0.1:1"}
    doctor_fails("--node", site.variant("pid", peers=peers), "peer v7", "fix the peer's id")


def test_a_validator_missing_from_peers(site):
    peers = {"v1": f"127.0.0.1:{site.ports['v1']}", "v2": f"127.0.0.1:{site.ports['v2']}"}
    doctor_fails("--node", site.variant("few", peers=peers), "peer v3", "add [[peers]]")


def test_peer_unreachable(site):
    peers = {"v1": f"127.0.0.1:{site.ports['v1']}", "v2": f"127.0.0.1:{site.ports['v2']}",
             "v3": f"127.0.0.1:{free_port()}"}
    doctor_fails("--node", site.variant("down", peers=peers),
                 "peer v3", "its node runs", "firewall")


def test_peer_address_of_another_validator(site):
    peers = {"v1": f"127.0.0.1:{site.ports['v1']}", "v2": f"127.0.0.1:{site.ports['v1']}",
             "v3": f"127.0.0.1:{site.ports['v3']}"}
    doctor_fails("--node", site.variant("swap", peers=peers), "peer v2", "address")


SKEWED_PEER = """
import sys, time
from pathlib import Path
real = time.time
time.time = lambda: real() + 120.0  # this machine's clock is two minutes fast
from anchornode.config import NodeConfig
from anchornode.qcsource import open_source
from anchornode.service import NodeService
from bftanchor.deployment import Deployment
cfg = NodeConfig.load(Path(sys.argv[1]))
svc = NodeService(cfg, Deployment.load(cfg.deployment),
                  bytes.fromhex(cfg.bft_key_file.read_text().strip()), None, [],
                  open_source(cfg.qc_source))
svc.start_server()
print("listening", flush=True)
time.sleep(120)
"""


def test_peer_clock_off(site):
    """v3's node runs on a machine whose clock is 2 minutes fast."""
    port = free_port()
    cfg = site.root / "op3" / "skewed.toml"
    cfg.write_text(site.node_text(3, listen=f"127.0.0.1:{port}"))
    proc = subprocess.Popen([sys.executable, "-c", SKEWED_PEER, str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)
    try:
        assert proc.stdout.readline().strip() == b"listening"
        peers = {"v1": f"127.0.0.1:{site.ports['v1']}", "v2": f"127.0.0.1:{site.ports['v2']}",
                 "v3": f"127.0.0.1:{port}"}
        bad = doctor_fails("--node", site.variant("skew", peers=peers),
                           "peer v3", "synchronise both clocks")
        assert "clock" in bad["check"] and "+12" in bad["detail"]
    finally:
        proc.kill()
        proc.wait()


def test_pow_node_unreachable(site):
    rc, f, _ = doctor("--node", site.variant("pow", pow_url=f"http://127.0.0.1:{free_port()}"))
    assert rc == 1
    failed = [x for x in f if x["status"] == "FAIL"]
    assert failed and all(x["check"].startswith("pow node") for x in failed)
    assert "start the PoW node" in failed[0]["fix"]


def test_cookie_unreadable(site):
    doctor_fails("--node", site.variant("cookie", cookie=site.root / "no.cookie"),
                 "pow node", "cookie")


@pytest.fixture(scope="module")
def bare_node(site):
    """A Litecoin node started the way Litecoin Core defaults: no txindex, no replacement."""
    node = RegtestNode(site.root / "bare", extra_args=["-txindex=0", "-mempoolreplacement=0"])
    node.start()
    yield node
    node.stop()


def _bare(site, bare_node, name):
    return site.variant(name, pow_url=bare_node.url,
                        cookie=bare_node.datadir / "regtest" / ".cookie")


def test_pow_node_without_txindex(site, bare_node):
    rc, f, _ = doctor("--node", _bare(site, bare_node, "notx"))
    assert rc == 1
    tx = [x for x in f if x["status"] == "FAIL" and x["check"].endswith("-txindex")]
    assert len(tx) == 1 and "-txindex=1" in tx[0]["fix"]


def test_litecoin_without_mempoolreplacement(site, bare_node):
    if not bare_node.binary.endswith("litecoind"):
        pytest.skip("Bitcoin Core replaces by default")
    rc, f, _ = doctor("--node", _bare(site, bare_node, "norbf"))
    assert rc == 1
    rbf = [x for x in f if x["status"] == "FAIL" and "mempoolreplacement" in x["check"]]
    assert len(rbf) == 1 and "-mempoolreplacement=1" in rbf[0]["fix"]


def test_pow_node_on_another_chain(site):
    foreign = edit_json(site.deployment, site.root / "op0" / "testnet.json",
                        chain="litecoin-test")
    doctor_fails("--node", site.variant("chain", deployment=foreign.name),
                 "pow node", "point [pow] at a litecoin node on test")


def test_genesis_coin_not_on_the_chain(site):
    data = json.loads(site.deployment.read_text())
    data["genesis"]["txid"] = "ab" * 32
    (site.root / "op0" / "nogenesis.json").write_text(json.dumps(data))
    doctor_fails("--node", site.variant("gen", deployment="nogenesis.json"),
                 "genesis coin", "-txindex=1")


def test_qc_source_missing(site):
    doctor_fails("--node", site.variant("qc", qc_source="../no-such-dir"),
                 "qc source", "directory the BFT node publishes into")


def test_qc_source_of_another_deployment(site, tmp_path):
    other = Deployment.load(site.deployment).epoch0
    body = other.to_json()
    body["end_round"] += 1  # another epoch 0: the chain does not verify from ours
    Publisher(site.root / "otherbft").publish_record(body)
    doctor_fails("--node", site.variant("qcx", qc_source="../otherbft"),
                 "qc source", "another deployment")


def test_link_without_appliance(site):
    doctor_fails("--node", site.variant("link", link="/dev/ttyNOSUCH0"),
                 "link", "appliance serve", "pairing secret")


def test_link_not_paired(site):
    """The node holds a pairing secret the appliance does not: every frame fails its MAC."""
    (site.root / "op0" / "wrong.secret").write_text("ab" * 32 + "\n")
    doctor_fails("--node", site.variant("unpaired", secret_file="wrong.secret"),
                 "link", "same pairing secret")


def test_appliance_without_deployment(site, tmp_path):
    d = tmp_path / "app"
    assert run("appliance", "init", d, "--validator-id", "v1")[0] == 0
    doctor_fails("--appliance", d / "appliance.toml", "deployment", "bft-anchor appliance install")


def test_seed_readable_by_others(site, tmp_path):
    d = tmp_path / "op1"
    shutil.copytree(site.root / "op1" / "appliance", d)
    (d / "seed.txt").chmod(0o644)
    doctor_fails("--appliance", d / "appliance.toml", "seed permissions", "chmod 600")


def test_journal_missing(site, tmp_path):
    d = tmp_path / "op1"
    shutil.copytree(site.root / "op1" / "appliance", d)
    (d / "journal.sqlite").unlink()
    doctor_fails("--appliance", d / "appliance.toml", "journal", "journal import")


def _jade_appliance(site, tmp_path: Path, mnemonic: str, port: int) -> Path:
    d = tmp_path / "jade-app"
    assert run("appliance", "init", d, "--validator-id", "v2", "--fingerprint", "00000000")[0] == 0
    cfg = d / "appliance.toml"
    text = cfg.read_text().replace('fingerprint = "00000000"',
                                   f'device_type = "jade"\ndevice_path = "tcp:127.0.0.1:{port}"')
    cfg.write_text(text)
    shutil.copy(site.deployment, d / "deployment.json")
    return cfg


def test_device_without_the_multisig_registered(site, tmp_path):
    mnemonic = (site.root / "op2" / "appliance" / "seed.txt").read_text().strip()
    emu = JadeEmulator(port=0, mnemonic=mnemonic, network="testnet")
    port = emu.start()
    try:
        cfg = _jade_appliance(site, tmp_path, mnemonic, port)
        doctor_fails("--appliance", cfg, "multisig registration", "bft-anchor appliance install")
        # The fix the doctor names is the fix.
        (cfg.parent / "deployment.json").unlink()
        rc, _, err = run("appliance", "install", "--config", cfg, "--deployment",
                         site.deployment, "--fingerprint", site.fingerprint)
        assert rc == 0, err
        rc, f, _ = doctor("--appliance", cfg)
        assert rc == 0, f
        assert any(x["check"] == "device capability" and x["status"] == "ok" for x in f)
    finally:
        emu.stop()


def test_device_holding_another_key(site, tmp_path):
    emu = JadeEmulator(port=0, mnemonic="abandon " * 11 + "about", network="testnet")
    port = emu.start()
    try:
        doctor_fails("--appliance", _jade_appliance(site, tmp_path, "", port),
                     "device key", "share was made with")
    finally:
        emu.stop()


def test_device_unreachable(site, tmp_path):
    doctor_fails("--appliance", _jade_appliance(site, tmp_path, "", free_port()),
                 "device", "plug the device in")


def test_unreadable_config_is_a_usage_error(tmp_path):
    bad = tmp_path / "node.toml"
    bad.write_text("this is = = not toml")
    rc, out, err = run("doctor", "--node", bad)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
