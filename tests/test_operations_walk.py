"""docs/operations.md, walked by four operators and a coordinator (issue 13).

Each operator has its own directory with its own hardware wallet (a Jade emulator that
HWI drives at an explicit device path), its own appliance process and its own node
process, joined by a serial line (a null-modem pair of ptys). They bootstrap a
deployment on a real regtest chain with the commands the document names, the BFT chain
(played with the publisher API of docs/bft-chain.md) publishes QCs and, from the
operators' next-epoch shares, certified epoch records; the nodes make three epochs of
checkpoints with two handovers, and an auditor checks the chain. Every command run and
every file named on a command line or in a config must appear in docs/operations.md.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from embit import bip39

from anchornode.pow.regtest import RegtestNode, free_port
from anchornode.procutil import die_with_parent
from bftanchor.deployment import Deployment
from bftanchor.publish import Publisher, certify, next_record
from bftanchor.share import KeyShare
from tests.deploy_helpers import NullModem, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~1 min: four operators, three epochs

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "operations.md").read_text()
BFT_ANCHOR = str(Path(sys.executable).parent / "bft-anchor")
N = 4
EPOCHS = 3
EPOCH_LENGTH = 40
WINDOW = 10
ROUND_INTERVAL = 0.3


class Walk:
    """Runs the documented commands and remembers every command and file they named."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.commands: list[str] = []
        self.files: set[str] = set()
        self.procs: list[subprocess.Popen] = []

    def _note(self, argv: list[object]) -> None:
        words = [str(argv[0])]
        if len(argv) > 1 and re.fullmatch(r"[a-z]+", str(argv[1])):
            words.append(str(argv[1]))  # a subcommand (appliance init, deploy draft, ...)
        self.commands.append(" ".join(words))
        for a in argv:
            text = str(a)
            if isinstance(a, Path) or (text.startswith("/") and not text.startswith("/dev/")):
                self.files.add(Path(text).name)

    def run(self, *argv: object, expect: int = 0) -> str:
        self._note(list(argv))
        rc, out, err = run(*argv)
        assert rc == expect, (argv, rc, out, err)
        assert "Traceback" not in err
        return out

    def spawn(self, log: Path, *argv: object) -> subprocess.Popen:
        self._note([a for a in argv if str(a) != "-v"])
        f = open(log, "ab")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen([BFT_ANCHOR, *map(str, argv)], stdout=f, stderr=f,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        f.close()
        self.procs.append(proc)
        return proc

    def config_files(self, text: str) -> None:
        """Files a config names (values ending in a file name; comments are not used)."""
        live = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        for value in re.findall(r'=\s*"([^"]+)"', live):
            name = Path(value).name
            if "." in name and not value.startswith(("http", "/dev/", "127.", "tcp:")):
                self.files.add(name)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def documented(name: str) -> bool:
    """A file name the document names, literally or as a `pattern-<id>-e<epoch>.json`."""
    if name in DOC:
        return True
    for token in re.findall(r"`([^`\s]+)`", DOC):
        if "<" in token:
            pattern = re.escape(token)
            pattern = re.sub(r"\\<[^>]*\\>|<[^>]*>", "[^/]+", pattern)
            if re.fullmatch(pattern, name):
                return True
    return False


class Miner(threading.Thread):
    """The PoW chain moving on: a block a second."""

    def __init__(self, node: RegtestNode) -> None:
        super().__init__(daemon=True)
        self.node, self.stop_event = node, threading.Event()

    def run(self) -> None:
        rpc = self.node.client()
        address = self.node.client("/wallet/miner").getnewaddress()
        while not self.stop_event.wait(1.0):
            try:
                rpc.generatetoaddress(1, address)
            except Exception:
                pass


class BFTChain(threading.Thread):
    """The BFT chain, through the publisher API: a QC a round, each next epoch's record
    built from the operators' shares and certified by the current epoch's quorum."""

    def __init__(self, root: Path, epoch0, secrets_by_id: dict[str, bytes],
                 shares: dict[int, list[KeyShare]]) -> None:
        super().__init__(daemon=True)
        self.pub = Publisher(root, epoch0)
        self.secrets, self.shares = secrets_by_id, shares
        self.stop_event = threading.Event()
        self.round = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import hashlib

        from bftanchor.publish import make_qc, sign_vote
        from bftanchor.qc import VoteInfo

        try:
            parent, parent_round = bytes(32), 0
            # The last epoch stops before its handover window, so its newest QC can always
            # carry a regular checkpoint however late the handover into it confirms.
            while not self.stop_event.is_set() and self.round < EPOCHS * EPOCH_LENGTH - WINDOW:
                epoch = self.round // EPOCH_LENGTH
                if self.round % EPOCH_LENGTH == 0 and epoch + 1 < EPOCHS:
                    rec = next_record(self.pub.records[epoch], self.shares[epoch + 1],
                                      EPOCH_LENGTH)
                    self.pub.publish_record(certify(rec, self.secrets))
                block = hashlib.sha256(b"block %d" % self.round).digest()
                vote = VoteInfo(block, self.round, epoch, parent, parent_round,
                                hashlib.sha256(b"exec %d" % self.round).digest())
                state = hashlib.sha256(b"state %d" % self.round).digest()
                quorum = sorted(self.secrets)[: 3 + self.round % 2]
                self.pub.publish_qc(make_qc(vote, state, {
                    v: sign_vote(self.secrets[v], state, vote) for v in quorum}))
                parent, parent_round = block, self.round
                self.round += 1
                self.stop_event.wait(ROUND_INTERVAL)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def node_toml(example: str, vid: str, listen: int, metrics: int, peers: dict[str, int],
              pow_url: str, cookie: Path, link: str, qc_source: Path) -> str:
    """The operator's edit of `bft-anchor node --example-config` (docs/operations.md step 7)."""
    text = example
    sub = {
        r'validator_id = "v0"': f'validator_id = "{vid}"',
        r'qc_source = "../bft"': f'qc_source = "{qc_source}"',
        r'listen = "127.0.0.1:7300"': f'listen = "127.0.0.1:{listen}"',
        r'metrics = "127.0.0.1:9300"': f'metrics = "127.0.0.1:{metrics}"',
        r'link = "/dev/bft-anchor-link"': f'link = "{link}"',
        r'# secret_file = "link.secret"': 'secret_file = "link.secret"',
        'url = "http://127.0.0.1:19443", cookie = "/var/lib/litecoin/regtest/.cookie"':
            f'url = "{pow_url}", cookie = "{cookie}"',
        "interval_blocks = 2": "interval_blocks = 4",
        "initiator_timeout = 10.0": "initiator_timeout = 8.0",
        "poll_interval = 0.5": "poll_interval = 0.25",
        "ladder = 3 ": "ladder = 1 ",
    }
    for old, new in sub.items():
        assert old in text, old
        text = text.replace(old, new)
    peer_text = "".join(f'[[peers]]\nid = "{p}"\naddress = "127.0.0.1:{port}"\n\n'
                        for p, port in peers.items())
    text = re.sub(r'\[\[peers\]\]\nid = "v1"\naddress = "127.0.0.1:7301"\n\n', peer_text, text)
    return text


def test_four_operators_follow_the_document_to_three_audited_epochs(tmp_path):
    walk = Walk(tmp_path)
    pow_node = RegtestNode(tmp_path / "litecoind").start()
    cookie = pow_node.datadir / "regtest" / ".cookie"
    miner = Miner(pow_node)
    modems: list[NullModem] = []
    bft: BFTChain | None = None
    try:
        pow_node.create_wallet("miner")
        coordinator_wallet = pow_node.client("/wallet/coordinator")
        pow_node.rpc.createwallet("coordinator")
        pow_node.mine(101, coordinator_wallet.getnewaddress())
        miner.start()
        ops = [tmp_path / f"operator{i}" for i in range(N)]
        coord = tmp_path / "coordinator"
        coord.mkdir()
        bft_dir = tmp_path / "bft"
        pubs: dict[str, str] = {}
        ports: dict[str, int] = {}
        # Steps 1-3, per operator: the device, the appliance directory, the BFT key, shares.
        for i, op in enumerate(ops):
            vid = f"v{i}"
            (op / "node").mkdir(parents=True)
            (op / "jade-mnemonic.txt").write_text(
                bip39.mnemonic_from_bytes(secrets.token_bytes(16)) + "\n")
            port = free_port()
            walk.spawn(op / "jade.log", "emulator", "jade", "--port", port,
                       "--mnemonic-file", op / "jade-mnemonic.txt",
                       "--state", op / "jade-state.json")
            ports[vid] = port
        for i, op in enumerate(ops):
            vid = f"v{i}"
            wait_for(lambda p=ports[vid]: _listening(p), 30, f"{vid}'s Jade emulator")
            walk.run("appliance", "init", op / "appliance", "--validator-id", vid,
                     "--device-type", "jade", "--device-path", f"tcp:127.0.0.1:{ports[vid]}")
            pubs[vid] = walk.run("deploy", "keygen", "--out", op / "node" / "bft.key").strip()
            for epoch in range(EPOCHS):
                walk.run("appliance", "share", "--config", op / "appliance" / "appliance.toml",
                         "--chain", pow_node.chain, "--epoch", epoch, "--bft-pubkey", pubs[vid],
                         "--out", op / f"share-{vid}-e{epoch}.json")
            (coord / f"share-{vid}-e0.json").write_bytes((op / f"share-{vid}-e0.json").read_bytes())
        # Steps 4-5, the coordinator: draft, then the genesis coin from its wallet.
        draft = coord / "deployment-draft.json"
        args: list[object] = ["deploy", "draft", "--chain", pow_node.chain, "--epoch-length",
                              EPOCH_LENGTH, "--handover-window", WINDOW, "--out", draft]
        for i in range(N):
            args += ["--share", coord / f"share-v{i}-e0.json"]
        out = walk.run(*args)
        fingerprint = re.search(r"wallet fingerprint: (\w{4} \w{4})", out).group(1)
        assert fingerprint in walk.run("deploy", "show", draft)
        walk.run("deploy", "genesis", "--draft", draft, "--rpc", pow_node.url, "--rpc-cookie",
                 cookie, "--wallet", "coordinator", "--amount", 5_000_000,
                 "--confirmations", 1, "--wait", 60, "--out", coord / "deployment.json")
        deployment = Deployment.load(coord / "deployment.json")
        assert deployment.handover_window == WINDOW
        # The BFT chain gets the deployment and publishes epoch 0 (docs/bft-chain.md).
        bft_secrets = {f"v{i}": bytes.fromhex((op / "node" / "bft.key").read_text().strip())
                       for i, op in enumerate(ops)}
        later_shares = {e: [KeyShare.load(op / f"share-v{i}-e{e}.json")
                            for i, op in enumerate(ops)] for e in range(1, EPOCHS)}
        bft = BFTChain(bft_dir, deployment.epoch0, bft_secrets, later_shares)
        # Step 6-7, per operator: install (fingerprint heard out of band), node.toml.
        example = walk.run("node", "--example-config")
        node_ports = {f"v{i}": free_port() for i in range(N)}
        for i, op in enumerate(ops):
            vid = f"v{i}"
            received = op / "node" / "deployment.json"
            received.write_bytes((coord / "deployment.json").read_bytes())
            walk.run("appliance", "install", "--config", op / "appliance" / "appliance.toml",
                     "--deployment", received, "--fingerprint", fingerprint)
            secret = secrets.token_hex(32)  # `openssl rand -hex 32 > link.secret`
            (op / "appliance" / "link.secret").write_text(secret + "\n")
            (op / "node" / "link.secret").write_text(secret + "\n")
            modem = NullModem()
            modems.append(modem)
            text = node_toml(example, vid, node_ports[vid], free_port(),
                             {p: port for p, port in node_ports.items() if p != vid},
                             pow_node.url, cookie, modem.b, bft_dir)
            (op / "node" / "node.toml").write_text(text)
            walk.config_files(text)
            walk.config_files((op / "appliance" / "appliance.toml").read_text())
        # Step 8: doctor, then the appliance; doctor, then the node.
        for i, op in enumerate(ops):
            cfg = op / "appliance" / "appliance.toml"
            walk.run("doctor", "--appliance", cfg)
            walk.spawn(op / "appliance.log", "-v", "appliance", "serve", "--config", cfg,
                       "--link", modems[i].a, "--secret-file", op / "appliance" / "link.secret")
        for i, op in enumerate(ops):
            node_cfg = op / "node" / "node.toml"
            rc, out, err = run("doctor", "--node", node_cfg, "--json")
            walk._note(["doctor", "--node", node_cfg])
            failed = [f for f in json.loads(out)["findings"] if f["status"] == "FAIL"]
            # Only the peers whose nodes are not started yet may be missing.
            assert all(f["check"].startswith(tuple(f"peer v{j}" for j in range(i + 1, N)))
                       for f in failed), failed
            assert rc == (1 if failed else 0) and (i < N - 1 or rc == 0), (failed, err)
            walk.spawn(op / "node.log", "-v", "node", "--config", node_cfg)
            wait_for(lambda p=node_ports[f"v{i}"]: _listening(p), 60, f"v{i}'s node")
        bft.start()

        # Three epochs, two handovers: wait for the coin to reach epoch 2 and be checkpointed.
        def progress():
            assert bft.error is None, bft.error
            status = _status(walk, ops[0])
            if status is None:
                return None
            cps = status["checkpoints"]
            return (sum(1 for c in cps if c.get("handover")) >= 2
                    and any(c["epoch"] == 2 for c in cps)) and status

        try:
            wait_for(progress, 150, "three epochs with two handovers")
        except TimeoutError:
            print(_status(walk, ops[0]))
            for op in ops:
                print(op.name, (op / "node.log").read_text()[-3000:])
            raise
        # The auditor: the epochs file from the QC source, then the audit.
        auditor = tmp_path / "auditor"
        auditor.mkdir()
        walk.run("deploy", "epochs", "--deployment", coord / "deployment.json",
                 "--qc-source", bft_dir, "--out", auditor / "epochs.json")
        report = json.loads(walk.run("audit", "--rpc", pow_node.url, "--rpc-cookie", cookie,
                                     "--deployment", coord / "deployment.json",
                                     "--epochs", auditor / "epochs.json", "--json"))
        cps = report["checkpoints"]
        assert [c["epoch"] for c in cps if c["handover"]] == [0, 1]
        assert {c["epoch"] for c in cps} == {0, 1, 2}
        assert not report.get("violations")
        walk.run("status", "--config", ops[1] / "node" / "node.toml", "--alert-blocks", 1000)
    finally:
        if bft is not None:
            bft.stop_event.set()
        miner.stop_event.set()
        walk.stop()
        for m in modems:
            m.close()
        pow_node.stop()
    # Nothing the operators did needed a command or a file the document does not name.
    flat = " ".join(DOC.replace("\\\n", " ").split())
    for command in set(walk.commands):
        assert f"bft-anchor {command}" in flat, f"`bft-anchor {command}` is not in the document"
    missing = sorted(f for f in walk.files if not documented(f))
    assert not missing, f"files the document does not mention: {missing}"


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _status(walk: Walk, op: Path) -> dict | None:
    rc, out, _ = run("status", "--config", op / "node" / "node.toml", "--json", "--last", "50",
                     "--alert-blocks", 100000)
    return json.loads(out) if out.strip() and rc in (0, 1) else None
