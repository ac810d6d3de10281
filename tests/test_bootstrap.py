"""Bootstrapping a deployment with the commands operators run (issue 13, items 1-4).

Shares come from the appliances, the coordinator drafts epoch 0 and funds the genesis
coin on a real regtest node, each appliance installs the result. Every command that
takes a share, a draft, a deployment or an outpoint refuses malformed, foreign or
inconsistent input with one line and exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from anchornode.pow.regtest import RegtestNode
from anchornode.pow.rpc import to_coin
from appliance.signers.software import SoftwareSigner
from bftanchor.bftsig import pubkey_from_secret
from bftanchor.share import KeyShare
from tests.deploy_helpers import (
    assert_refused,
    draft_args,
    edit_json,
    make_team,
    run,
    vout_to,
)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    shares = make_team(root)
    draft = root / "deployment-draft.json"
    rc, out, err = run(*draft_args(shares, draft))
    assert rc == 0, err
    return root, shares, draft, out


def test_init_force_never_overwrites_a_seed_or_journal(tmp_path):
    d = tmp_path / "app"
    assert run("appliance", "init", d)[0] == 0
    seed = (d / "seed.txt").read_text()
    journal = d / "journal.sqlite"
    before = journal.read_bytes()
    assert run("appliance", "init", d)[0] == 2  # the config exists
    rc, out, err = run("appliance", "init", d, "--force", "--validator-id", "v7")
    assert rc == 0, err
    assert (d / "seed.txt").read_text() == seed
    assert journal.read_bytes() == before
    assert "kept the existing seed" in out
    assert 'validator_id = "v7"' in (d / "appliance.toml").read_text()


def test_draft_prints_what_operators_check(team):
    root, shares, draft, out = team
    data = json.loads(draft.read_text())
    assert data["chain"] == "litecoin-regtest" and data["handover_window"] == 10
    rec = data["epoch0"]
    assert rec["threshold"] == 3 and [v["id"] for v in rec["validators"]] == [
        "v0", "v1", "v2", "v3"]
    assert (rec["start_round"], rec["end_round"]) == (0, 39)
    for line in ("descriptor: wsh(sortedmulti(3,", "address: rltc1", "wallet fingerprint: "):
        assert line in out
    # `deploy show` recomputes the same values from the file alone.
    rc, shown, _ = run("deploy", "show", draft, "--json")
    s = json.loads(shown)
    fp = hashlib.sha256(s["descriptor"].encode()).hexdigest()[:8].upper()
    assert s["wallet_fingerprint"] == f"{fp[:4]} {fp[4:]}"
    assert f"address: {s['address']}" in out
    # Each share's key is the one its seed derives at m/48h/1h/0h/2h.
    for i, sh in enumerate(shares):
        signer = SoftwareSigner.from_file(root / f"op{i}" / "appliance" / "seed.txt")
        assert KeyShare.load(sh).pow_key == signer.pow_key(0)
    # The draft is never overwritten.
    assert_refused(run(*draft_args(shares[::-1], draft)), "exists")


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda s: s.write_text("{not json"), ["not json"]),
        (lambda s: s.write_text("[]"), ["object"]),
        (lambda s: _edit(s, format="something/else"), ["not a key share"]),
        (lambda s: _edit(s, chain="dogecoin-main"), ["unknown chain"]),
        (lambda s: _edit(s, bft_pubkey="02" + "00" * 32), ["secp256k1"]),
        (lambda s: _edit(s, bft_pubkey="zz"), ["hex"]),
        (lambda s: _edit(s, validator_id=""), ["validator_id"]),
        (lambda s: _edit(s, epoch=-1), ["epoch"]),
        (lambda s: _edit(s, pow_key="[00000000/48h/1h/0h/2h]tpubgarbage"), ["pow_key"]),
        (lambda s: _swap_path(s, "/48h/1h/0h/2h", "/48h/1h/0h/1h"), ["path"]),
        (lambda s: _swap_path(s, "/48h/1h/0h/2h", "/48h/1h/5h/2h"), ["path"]),
        (lambda s: _edit(s, device={"fingerprint": "00000000"}), ["fingerprint"]),
        (lambda s: s.unlink(), ["cannot read"]),
    ],
    ids=["not-json", "not-object", "format", "chain", "bft-point", "bft-hex", "empty-id",
         "epoch", "pow-key", "path-type", "path-epoch", "device-fp", "missing"],
)
def test_draft_refuses_a_malformed_share(team, tmp_path, mutate, words):
    root, shares, _draft, _ = team
    bad = tmp_path / "bad.json"
    bad.write_text(shares[0].read_text())
    mutate(bad)
    line = assert_refused(run(*draft_args([bad, *shares[1:]], tmp_path / "d.json")), *words)
    assert "share" in line
    assert not (tmp_path / "d.json").exists()


def _edit(path: Path, **changes: object) -> None:
    edit_json(path, path, **changes)


def _swap_path(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def test_draft_refuses_inconsistent_shares(team, tmp_path):
    root, shares, _draft, _ = team
    out = tmp_path / "d.json"
    assert_refused(run(*draft_args([shares[0], shares[0], *shares[1:]], out)), "duplicate")
    # Another validator id but the same key: still a duplicate.
    twin = edit_json(shares[0], tmp_path / "twin.json", validator_id="v9")
    assert_refused(run(*draft_args([twin, *shares], out)), "duplicate")
    # Same BFT key under another id and PoW key.
    bft = json.loads(shares[1].read_text())["bft_pubkey"]
    clash = edit_json(shares[0], tmp_path / "clash.json", bft_pubkey=bft)
    assert_refused(run(*draft_args([clash, *shares[1:]], out)), "duplicate BFT public key")
    # A share for another chain (same key kind, so the key itself parses).
    foreign = edit_json(shares[0], tmp_path / "f.json", chain="litecoin-test")
    assert_refused(run(*draft_args([foreign, *shares[1:]], out)), "litecoin-test")
    # A mainnet chain wants mainnet keys.
    assert_refused(run(*draft_args(shares, out, chain="bitcoin-main")), "bitcoin-main")
    # Bad numbers.
    assert_refused(run(*draft_args(shares, out, window=40)), "handover-window")
    assert_refused(run(*draft_args(shares, out, epoch_length=0)), "handover-window")
    assert not out.exists()


def _software_shares(tmp: Path, n: int, device: dict | None = None) -> list[Path]:
    out = []
    for i in range(n):
        s = SoftwareSigner.from_seed(hashlib.sha256(b"many %d" % i).digest())
        pub = pubkey_from_secret(hashlib.sha256(b"bft %d" % i).digest())
        dev = dict(device or {"type": "software"}, fingerprint=s.fingerprint.hex())
        share = KeyShare("litecoin-regtest", 0, f"v{i}", pub, s.pow_key(0), device=dev)
        p = tmp / f"s{i}.json"
        share.save(p)
        out.append(p)
    return out


def test_draft_refuses_n_beyond_script_and_devices(tmp_path):
    out = tmp_path / "d.json"
    shares = _software_shares(tmp_path, 21)
    assert_refused(run(*draft_args(shares, out)), "n = 21", "at most 20")
    jade = {"type": "jade", "model": "jade", "firmware": "1.0.35"}
    (tmp_path / "j").mkdir()
    jshares = _software_shares(tmp_path / "j", 16, jade)
    assert_refused(run(*draft_args(jshares, out)), "n = 16", "at most 15")
    assert run(*draft_args(jshares[:15], out))[0] == 0
    # A device whose firmware is older than its profile's minimum cannot sign at all.
    (tmp_path / "old").mkdir()
    old = _software_shares(tmp_path / "old", 4, dict(jade, firmware="0.1.30"))
    assert_refused(run(*draft_args(old, tmp_path / "d2.json")), "v0", "0.1.30", "cannot sign")


@pytest.fixture(scope="module")
def pow_node():
    node = RegtestNode().start()
    wallet = node.create_wallet("coordinator")
    node.mine(101)
    yield node, wallet
    node.stop()


def _rpc_args(node: RegtestNode) -> list[object]:
    return ["--rpc", node.url, "--rpc-cookie", node.datadir / "regtest" / ".cookie"]


def _address(draft: Path) -> str:
    return json.loads(run("deploy", "show", draft, "--json")[1])["address"]


@pytest.mark.integration
def test_genesis_from_an_operator_supplied_outpoint(team, pow_node, tmp_path):
    node, wallet = pow_node
    _, _, draft, _ = team
    address = _address(draft)
    rc, out, _ = run("deploy", "genesis", "--draft", draft, "--amount", 1_000_000)
    assert rc == 0 and address in out and "--outpoint" in out
    txid = wallet.sendtoaddress(address, float(to_coin(1_000_000)))
    vout = vout_to(node, txid, address)
    other = wallet.sendtoaddress(wallet.getnewaddress(), 0.01)
    dep = tmp_path / "deployment.json"
    g = ["deploy", "genesis", "--draft", draft, *_rpc_args(node), "--out", dep]
    # Unconfirmed: exit 1 (run again later), nothing written.
    rc, _, err = run(*g, "--outpoint", f"{txid}:{vout}", "--amount", 1_000_000)
    assert rc == 1 and "0 of 1 confirmations" in err and not dep.exists()
    node.mine(1)
    assert_refused(run(*g, "--outpoint", "nonsense"), "outpoint")
    assert_refused(run(*g, "--outpoint", f"{txid}:-1"), "outpoint")
    assert_refused(run(*g, "--outpoint", f"{'ab' * 32}:0"), "does not know")
    assert_refused(run(*g, "--outpoint", f"{txid}:7"), "outputs")
    assert_refused(run(*g, "--outpoint", f"{other}:0"), "foreign")
    assert_refused(run(*g, "--outpoint", f"{txid}:{vout}", "--amount", 5), "not the 5 sat")
    assert_refused(run("deploy", "genesis", "--draft", team[1][0], *_rpc_args(node),
                       "--outpoint", f"{txid}:{vout}", "--out", dep), "not a deployment draft")
    rc, out, err = run(*g, "--outpoint", f"{txid}:{vout}", "--amount", 1_000_000)
    assert rc == 0, err
    d = json.loads(dep.read_text())
    assert d["genesis"] == {"txid": txid, "vout": vout, "value": 1_000_000}
    assert d["handover_window"] == 10 and d["epoch0"] == json.loads(draft.read_text())["epoch0"]
    assert_refused(run(*g, "--outpoint", f"{txid}:{vout}"), "exists")
    # A draft for another chain than the PoW node's.
    foreign = edit_json(draft, tmp_path / "fd.json", chain="bitcoin-regtest")
    assert_refused(run("deploy", "genesis", "--draft", foreign, *_rpc_args(node), "--outpoint",
                       f"{txid}:{vout}", "--out", tmp_path / "x.json"), "does not serve")


@pytest.mark.integration
def test_genesis_funded_from_a_named_wallet_waits_for_confirmation(team, pow_node, tmp_path):
    node, _wallet = pow_node
    _, _, draft, _ = team
    dep = tmp_path / "deployment.json"
    result: list = []
    t = threading.Thread(target=lambda: result.append(run(
        "deploy", "genesis", "--draft", draft, *_rpc_args(node), "--wallet", "coordinator",
        "--amount", 2_000_000, "--confirmations", 2, "--wait", 60, "--out", dep)))
    t.start()
    deadline = time.monotonic() + 60
    while not node.rpc.getrawmempool() and time.monotonic() < deadline:
        time.sleep(0.2)
    node.mine(2)
    t.join(70)
    rc, out, err = result[0]
    assert rc == 0, err
    g = json.loads(dep.read_text())["genesis"]
    tx = node.rpc.getrawtransaction(g["txid"], True)
    assert tx["confirmations"] >= 2
    assert vout_to(node, g["txid"], _address(draft)) == g["vout"]
    assert g["value"] == 2_000_000


@pytest.mark.integration
def test_install_checks_fingerprint_member_and_key(team, pow_node, tmp_path):
    node, wallet = pow_node
    root, shares, draft, _ = team
    address = _address(draft)
    txid = wallet.sendtoaddress(address, 0.02)
    node.mine(1)
    vout = vout_to(node, txid, address)
    dep = tmp_path / "deployment.json"
    assert run("deploy", "genesis", "--draft", draft, *_rpc_args(node), "--outpoint",
               f"{txid}:{vout}", "--out", dep)[0] == 0
    fp = json.loads(run("deploy", "show", dep, "--json")[1])["wallet_fingerprint"]
    cfg = root / "op1" / "appliance" / "appliance.toml"
    inst = ["appliance", "install", "--config", cfg, "--deployment"]
    assert_refused(run(*inst, dep, "--fingerprint", "0000 0000"), "wallet fingerprint")
    assert_refused(run(*inst, draft, "--fingerprint", fp), "deployment")
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    assert_refused(run(*inst, junk, "--fingerprint", fp), "junk.json")
    # An appliance whose validator is not in epoch 0.
    stranger = tmp_path / "stranger"
    run("appliance", "init", stranger, "--validator-id", "v9")
    assert_refused(run("appliance", "install", "--config", stranger / "appliance.toml",
                       "--deployment", dep, "--fingerprint", fp), "v9", "not in epoch 0")
    # An appliance named v2 but holding another seed than the one v2's share came from.
    imp = tmp_path / "impostor"
    run("appliance", "init", imp, "--validator-id", "v2")
    assert_refused(run("appliance", "install", "--config", imp / "appliance.toml",
                       "--deployment", dep, "--fingerprint", fp), "holds")
    rc, out, err = run(*inst, dep, "--fingerprint", fp.replace(" ", "").lower())
    assert rc == 0, err
    installed = root / "op1" / "appliance" / "deployment.json"
    assert installed.read_bytes() == dep.read_bytes()
    assert run(*inst, dep, "--fingerprint", fp)[0] == 0  # idempotent
    other = edit_json(dep, tmp_path / "other.json", magic="41414141")
    assert_refused(run(*inst, other, "--fingerprint", fp), "already holds another deployment")
    assert installed.read_bytes() == dep.read_bytes()
    installed.unlink()


def test_show_and_epochs_refuse_malformed_or_foreign_input(team, tmp_path):
    root, shares, draft, _ = team
    for text in ("{", "[1]", '{"format": 3}'):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        assert_refused(run("deploy", "show", bad), "bad.json")
    assert_refused(run("deploy", "show", tmp_path / "missing.json"), "cannot read")
    assert_refused(run("deploy", "show", shares[0]), "share")
    # The epochs file is built only from records that verify back to this epoch 0.
    from bftanchor.deployment import Deployment
    from bftanchor.publish import Publisher
    from bftanchor.share import Draft
    from bftanchor.template import Coin, Outpoint

    d = Draft.load(draft)
    dep = Deployment(d.chain, d.magic, Coin(Outpoint("ab" * 32, 0), 1000, 0), d.epoch0,
                     d.handover_window)
    dep_file = tmp_path / "deployment.json"
    dep.save(dep_file)
    ours = Publisher(tmp_path / "ours", d.epoch0)
    out = tmp_path / "epochs.json"
    rc, text, err = run("deploy", "epochs", "--deployment", dep_file, "--qc-source",
                        ours.root, "--out", out)
    assert rc == 0, err
    assert json.loads(out.read_text()) == [d.epoch0.to_json()]
    other = d.epoch0.to_json()
    other["end_round"] += 5
    Publisher(tmp_path / "theirs").publish_record(other)
    assert_refused(run("deploy", "epochs", "--deployment", dep_file, "--qc-source",
                       tmp_path / "theirs", "--out", tmp_path / "e2.json"), "differs")
    assert_refused(run("deploy", "epochs", "--deployment", draft, "--qc-source", ours.root,
                       "--out", tmp_path / "e3.json"), "genesis")
