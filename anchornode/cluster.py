"""A whole network of separate processes on one machine: for tests and the node devnet.

Two regtest PoW nodes connected to each other, and per validator an appliance
process and a node process joined by a pseudo-terminal serial link. A simulated
BFT chain publishes QCs and certified epoch records into a directory the nodes
read; blocks are mined at a steady pace. Every process can be stopped and started
again, so tests can kill initiators, validators and PoW nodes.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embit import bip39

from anchornode.bftsim import SimulatedBFTChain
from anchornode.bootstrap import check_coin, fund_from_wallet, write_deployment, write_draft
from anchornode.pow.regtest import MiningError, RegtestNode, free_port
from anchornode.pow.rpc import PowRpc, RpcError
from anchornode.procutil import die_with_parent, spawn_appliance, stop_process
from anchornode.qcsource import DirectoryWriter
from appliance.config import EXAMPLE as APPLIANCE_EXAMPLE
from appliance.signers.software import SoftwareSigner
from bftanchor.bftsig import pubkey_from_secret
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import EpochRecord
from bftanchor.link.pty import PtyMasterSerial, open_pty_pair
from bftanchor.network import network
from bftanchor.secretfile import write_secret
from bftanchor.share import Draft, KeyShare, build_epoch0
from bftanchor.template import Coin

log = logging.getLogger("bft_anchor.cluster")


@dataclass
class ClusterOptions:
    validators: int = 4
    epochs: int = 3
    rounds_per_epoch: int = 40
    round_interval: float = 0.25
    block_interval: float = 1.0
    interval_blocks: int = 2
    handover_margin: int = 10  # the deployment's handover_window is handover_margin + 1
    stuck_after: int = 2
    initiator_timeout: float = 6.0
    fee_min_rate: float = 2.0
    ladder: int = 3
    ladder_factor: float = 1.6
    pow_nodes: int = 2
    pow_args: list[str] = field(default_factory=list)
    max_fee_sat: int = 100_000
    genesis_value: int = 100_000_000
    topup_below: int = 0  # > 0: a fee wallet "fees" on the first PoW node tops the coin up
    topup_amount: int = 200_000
    # Height the chain is mined to before the network starts (>= 101 for mature coins);
    # on Litecoin a start just below 432 takes the network through MWEB's activation.
    start_height: int = 101


@dataclass
class Member:
    id: str
    dir: Path
    bft_secret: bytes
    signer: SoftwareSigner
    port: int
    metrics_port: int
    master: PtyMasterSerial | None = None
    slave: str = ""
    appliance: subprocess.Popen | None = None
    node: subprocess.Popen | None = None

    @property
    def node_log(self) -> Path:
        return self.dir / "node.log"

    @property
    def appliance_log(self) -> Path:
        return self.dir / "appliance.log"


class Cluster:
    def __init__(self, root: Path, opts: ClusterOptions | None = None) -> None:
        self.root = Path(root)
        self.opts = opts or ClusterOptions()
        self.pow: list[RegtestNode] = []
        self.members: list[Member] = []
        self.records: dict[int, EpochRecord] = {}
        self.sim: SimulatedBFTChain | None = None
        self.writer: DirectoryWriter | None = None
        self.genesis: Coin | None = None
        self.round = 0
        self.stop_event = threading.Event()
        self.mining = threading.Event()
        self.mining.set()
        self._threads: list[threading.Thread] = []
        self.error: str | None = None  # set when the world stopped moving (mining failed)

    # --- set-up --------------------------------------------------------------------

    def start(self) -> Cluster:
        o = self.opts
        # Absolute: the nodes' configs name cookie files and run from other directories.
        self.root = self.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(o.pow_nodes):
            node = RegtestNode(self.root / f"pow{i}", extra_args=o.pow_args).start()
            self.pow.append(node)
        for a in self.pow[1:]:
            a.connect(self.pow[0])
        miner = self.pow[0]
        wallet = miner.create_wallet("miner")
        miner.mine(max(101, o.start_height) - int(miner.rpc.getblockcount()))
        self.sim = SimulatedBFTChain.create(
            o.validators, o.rounds_per_epoch, seed=secrets.randbits(16)
        )
        for v in self.sim.validators:
            d = self.root / v.id
            d.mkdir(parents=True, exist_ok=True)
            mnemonic = bip39.mnemonic_from_bytes(secrets.token_bytes(32))
            write_secret(d / "seed.txt", mnemonic + "\n")
            write_secret(d / "bft.key", v.bft_secret.hex() + "\n")
            self.members.append(
                Member(
                    v.id,
                    d,
                    v.bft_secret,
                    SoftwareSigner.from_mnemonic(mnemonic),
                    free_port(),
                    free_port(),
                )
            )
        # The deployment is built as operators build theirs (docs/operations.md): a key
        # share per validator, epoch 0 drafted from the shares, the genesis coin funded
        # from a wallet and checked on the node before the deployment file is written.
        shares = [
            KeyShare(miner.chain, 0, m.id, pubkey_from_secret(m.bft_secret),
                     m.signer.pow_key(0), device={"type": "software"})
            for m in self.members
        ]
        rec0 = build_epoch0(shares, miner.chain, o.rounds_per_epoch, 0)
        self.sim.records[0] = rec0
        self.records[0] = rec0
        draft = Draft(miner.chain, b"BFTA", o.handover_margin + 1, rec0)
        write_draft(self.root / "deployment-draft.json", draft)
        ms0 = EpochMultisig(rec0)
        outpoint = fund_from_wallet(miner.rpc, "miner", ms0.address(network(miner.chain)),
                                    ms0.script_pubkey.data.hex(), o.genesis_value)
        if o.topup_below:
            fees = miner.client("/wallet/fees")
            miner.rpc.createwallet("fees")
            wallet.sendtoaddress(fees.getnewaddress("", "bech32"), 1.0)
        miner.mine(1)
        value = check_coin(miner.rpc, outpoint, ms0, o.genesis_value)["value"]
        self.deployment = write_deployment(self.root / "deployment.json", draft, outpoint,
                                           value)
        self.genesis = self.deployment.genesis
        self.writer = DirectoryWriter(self.root / "bft")
        self.writer.publish_record(rec0)
        self.wait_synced()
        for m in self.members:
            self._write_configs(m)
            m.master, m.slave = open_pty_pair()
            self.start_appliance(m)
        for m in self.members:
            self.start_node(m)
        for target in (self._drive_bft, self._drive_blocks):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def pow_keys(self, epoch: int) -> dict[str, str]:
        return {m.id: m.signer.pow_key(epoch) for m in self.members}

    def _write_configs(self, m: Member) -> None:
        o = self.opts
        app = APPLIANCE_EXAMPLE.replace('validator_id = "v0"', f'validator_id = "{m.id}"')
        app = app.replace('deployment = "deployment.json"', 'deployment = "../deployment.json"')
        app = app.replace("max_fee_sat = 100000", f"max_fee_sat = {o.max_fee_sat}")
        (m.dir / "appliance.toml").write_text(app)
        peers = "".join(
            f'\n[[peers]]\nid = "{p.id}"\naddress = "127.0.0.1:{p.port}"\n'
            for p in self.members
            if p.id != m.id
        )
        nodes = ", ".join(
            f'{{ url = "{n.url}", cookie = "{n.datadir / "regtest" / ".cookie"}" }}'
            for n in self.pow
        )
        (m.dir / "node.toml").write_text(
            f'validator_id = "{m.id}"\nbft_key_file = "bft.key"\n'
            f'deployment = "../deployment.json"\nqc_source = "../bft"\n'
            f'listen = "127.0.0.1:{m.port}"\nmetrics = "127.0.0.1:{m.metrics_port}"\n'
            f'[appliance]\nlink = "LINK"\n{peers}\n[pow]\nnodes = [{nodes}]\n'
            f"[schedule]\ninterval_blocks = {o.interval_blocks}\n"
            f"stuck_after = {o.stuck_after}\n"
            f"initiator_timeout = {o.initiator_timeout}\npoll_interval = 0.25\n"
            f"[fees]\nmin_rate = {o.fee_min_rate}\nladder = {o.ladder}\n"
            f"ladder_factor = {o.ladder_factor}\n"
            + (
                f'topup_wallet = "fees"\ntopup_below = {o.topup_below}\n'
                f"topup_amount = {o.topup_amount}\n"
                if o.topup_below
                else ""
            )
        )

    # --- processes ------------------------------------------------------------------

    def start_appliance(self, m: Member) -> None:
        logf = open(m.appliance_log, "ab")  # noqa: SIM115 (the child owns it)
        m.appliance = spawn_appliance(m.dir / "appliance.toml", m.slave, logf)
        logf.close()

    def start_node(self, m: Member) -> None:
        assert m.master is not None
        fd = m.master.fileno()
        cfg = m.dir / "node.toml"
        text = cfg.read_text().replace('link = "LINK"', f'link = "fd:{fd}"')
        live = m.dir / "node.live.toml"
        live.write_text(text)
        logf = open(m.node_log, "ab")  # noqa: SIM115
        m.node = subprocess.Popen(
            [sys.executable, "-m", "anchorcli", "-v", "node", "--config", str(live)],
            stdout=logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            pass_fds=(fd,),
        )
        logf.close()

    @staticmethod
    def _stop(proc: subprocess.Popen | None, kill: bool = False) -> None:
        if proc is not None:
            stop_process(proc, kill=kill)

    def stop_validator(self, vid: str, kill: bool = True) -> None:
        m = self.member(vid)
        self._stop(m.node, kill)
        self._stop(m.appliance, kill)

    def start_validator(self, vid: str) -> None:
        m = self.member(vid)
        self.start_appliance(m)
        self.start_node(m)

    def member(self, vid: str) -> Member:
        return next(m for m in self.members if m.id == vid)

    # --- the world moving on -----------------------------------------------------------

    def _drive_bft(self) -> None:
        o = self.opts
        assert self.sim is not None and self.writer is not None
        while not self.stop_event.is_set() and self.round < o.epochs * o.rounds_per_epoch:
            epoch = self.round // o.rounds_per_epoch
            if self.round % o.rounds_per_epoch == 0 and epoch + 1 < o.epochs:
                rec = self.sim.make_record(epoch + 1, self.pow_keys(epoch + 1))
                self.records[epoch + 1] = rec
                self.writer.publish_record(rec)
            self.writer.publish_qc(self.sim.qc(epoch, self.round))
            self.round += 1
            self.stop_event.wait(o.round_interval)

    def _drive_blocks(self) -> None:
        """A block every block_interval on the first running PoW node. A node that is
        down or restarting passes the turn to the next; any other failure to mine is
        kept in `error` and stops the cluster's waits (never swallowed)."""
        while not self.stop_event.wait(self.opts.block_interval):
            if not self.mining.is_set():
                continue
            for node in self.pow:
                if not node.running:
                    continue
                try:
                    node.mine(1)
                    break
                except MiningError as exc:
                    cause = exc.__cause__
                    if isinstance(cause, RpcError) and cause.unavailable:
                        continue
                    if not node.running:
                        continue
                    self.error = f"mining stopped: {exc}"
                    log.error("%s", self.error)
                    return

    def restart_pow(self, index: int, extra_args: list[str] | None = None) -> None:
        """Restart one PoW node (new cookie) and reconnect it to the others."""
        node = self.pow[index]
        node.restart(extra_args)
        for other in self.pow:
            if other is not node and other.running:
                node.connect(other)

    @property
    def finished(self) -> bool:
        return self.round >= self.opts.epochs * self.opts.rounds_per_epoch

    def rpc(self) -> PowRpc:
        for node in self.pow:
            if node.running and node.rpc is not None:
                return node.rpc
        raise RpcError("no PoW node is running")

    def wait_synced(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            heights = {n.rpc.getblockcount() for n in self.pow if n.running}
            if len(heights) <= 1:
                return
            time.sleep(0.2)

    def checkpoints(self) -> list[Any]:
        return self.audit().checkpoints

    def audit(self) -> Any:
        """The audit of the chain so far, against the deployment and every record made."""
        from anchornode.audit import audit_chain

        assert self.genesis is not None, "start() first"
        return audit_chain(
            self.rpc(), self.deployment, [self.records[e] for e in sorted(self.records)]
        )

    def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error:
                raise RuntimeError(f"{self.error} (while waiting for {what})")
            value = predicate()
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def logs(self, vid: str) -> str:
        m = self.member(vid)
        return m.node_log.read_text(errors="replace") if m.node_log.exists() else ""

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(5)
        for m in self.members:
            self._stop(m.node)
            self._stop(m.appliance)
            if m.master is not None:
                m.master.close()
        for n in self.pow:
            n.stop()
        (self.root / "epochs.json").write_text(
            json.dumps([self.records[e].to_json() for e in sorted(self.records)], indent=1)
        )

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["Cluster", "ClusterOptions", "Member"]
