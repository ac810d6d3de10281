"""Start and stop a private regtest PoW node (bitcoind where present, else litecoind).

Ports are free loopback ports, the datadir is temporary unless given, and stop()
always leaves no process behind: RPC stop, then SIGTERM, then SIGKILL. A stopped
node can be started again on the same ports and datadir (a new cookie).

Litecoin Core activates MWEB at regtest height 432 and cannot mine that block
without an MWEB peg-in in its mempool (litecoin-project/litecoin #807, #1082), so
mine() makes one from the node's wallet just before it; any mining failure raises.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from anchornode.pow.rpc import PowRpc, RpcError
from anchornode.procutil import die_with_parent, stop_process

log = logging.getLogger("bft_anchor.pow")

DAEMONS = (("bitcoind", "bitcoin-regtest"), ("litecoind", "litecoin-regtest"))
MWEB_HEIGHT = 432  # Litecoin regtest: the first block with an MWEB extension block
PEGIN_AMOUNT = 1.0


class NodeError(Exception):
    pass


class MiningError(NodeError):
    """The node would not mine: never to be swallowed, a test that needs blocks stops here."""


def find_daemon(prefer: str | None = None) -> tuple[str, str]:
    """(binary path, chain name): bitcoind where on PATH, otherwise litecoind."""
    order = DAEMONS
    if prefer:
        order = tuple(d for d in DAEMONS if d[0] == prefer) or order
    for name, chain in order:
        path = shutil.which(name)
        if path:
            return path, chain
    raise NodeError(
        "no PoW node found: install litecoind (apt-get install -y litecoind) "
        "or put bitcoind on PATH"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegtestNode:
    def __init__(
        self,
        datadir: Path | None = None,
        daemon: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary, self.chain = find_daemon(daemon or os.environ.get("BFT_ANCHOR_POW_DAEMON"))
        self._tmp = None if datadir else tempfile.TemporaryDirectory(prefix="bft-anchor-pow-")
        self.datadir = Path(datadir) if datadir else Path(self._tmp.name)
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.rpc_port = free_port()
        self.p2p_port = free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.rpc: PowRpc | None = None
        self.wallet_rpc: PowRpc | None = None
        self._clients: list[PowRpc] = []
        self._wallets: list[str] = []
        self._ready = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    def start(self, timeout: float = 60.0) -> RegtestNode:
        args = [
            self.binary,
            "-regtest",
            f"-datadir={self.datadir}",
            "-server=1",
            "-listen=1",
            "-bind=127.0.0.1",
            f"-port={self.p2p_port}",
            f"-rpcport={self.rpc_port}",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            "-txindex=1",
            "-fallbackfee=0.0002",
            "-printtoconsole=0",
            "-dnsseed=0",
            "-discover=0",
            "-upnp=0",
            "-rpcthreads=8",
            "-rpcworkqueue=64",
        ]
        if Path(self.binary).name == "litecoind":
            # Litecoin Core relays no BIP125 replacement unless told to (default 0), and a
            # stuck checkpoint is replaced; a real Litecoin deployment must set it too.
            args.append("-mempoolreplacement=1")
        args += self.extra_args
        log.info(
            "starting %s on rpc port %d (datadir %s)",
            Path(self.binary).name,
            self.rpc_port,
            self.datadir,
        )
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent
        )
        cookie = self.datadir / "regtest" / ".cookie"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise NodeError(f"{self.binary} exited with {self.proc.returncode}: {err.strip()}")
            if cookie.exists():
                try:
                    self.rpc = PowRpc(self.url, cookie_file=cookie)
                    self.rpc.getblockchaininfo()
                    break
                except RpcError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise NodeError(f"{self.binary} did not answer RPC within {timeout:.0f} s")
            time.sleep(0.1)
        for name in self._wallets:  # a restarted node loads no wallet by itself
            self._load_wallet(name)
        self._ready = True
        return self

    def create_wallet(self, name: str = "miner") -> PowRpc:
        assert self.rpc is not None
        try:
            self.rpc.createwallet(name)
        except RpcError as exc:
            if "already exists" not in str(exc):
                raise
            self._load_wallet(name)
        if name not in self._wallets:
            self._wallets.append(name)
        self.wallet_rpc = self.client(f"/wallet/{name}")
        return self.wallet_rpc

    def _load_wallet(self, name: str) -> None:
        assert self.rpc is not None
        try:
            self.rpc.loadwallet(name)
        except RpcError as exc:
            if "already loaded" not in str(exc):
                raise

    def client(self, path: str = "") -> PowRpc:
        """A new RPC client (one per thread); closed when the node stops."""
        assert self.rpc is not None
        c = self.rpc.with_path(path or "/")
        self._clients.append(c)
        return c

    @property
    def cookie_file(self) -> Path:
        return self.datadir / "regtest" / ".cookie"

    @property
    def is_litecoin(self) -> bool:
        return Path(self.binary).name == "litecoind"

    def mine(self, blocks: int = 1, address: str | None = None) -> list[str]:
        """Mine blocks (to the node's wallet unless address is given); raise MiningError
        when the node will not, with its reason."""
        assert self.rpc is not None
        try:
            if address is None:
                w = self.wallet_rpc or self.create_wallet()
                address = w.getnewaddress()
            hashes: list[str] = []
            tip = int(self.rpc.getblockcount())
            if self.is_litecoin and tip < MWEB_HEIGHT <= tip + blocks:
                hashes += self.rpc.generatetoaddress(MWEB_HEIGHT - 1 - tip, address)
                self._mweb_pegin()
                blocks -= len(hashes)
            hashes += self.rpc.generatetoaddress(blocks, address)
        except RpcError as exc:
            raise MiningError(f"{Path(self.binary).name} on port {self.rpc_port}: {exc}") from exc
        return hashes

    def _mweb_pegin(self) -> None:
        """Put an MWEB peg-in into the mempool, as block 432 requires (Litecoin's own
        functional tests do the same: a wallet send to an `mweb` address)."""
        w = self.wallet_rpc or self.create_wallet()
        if float(w.getbalance()) < PEGIN_AMOUNT * 2:
            raise MiningError(
                f"block {MWEB_HEIGHT} needs an MWEB peg-in, and wallet {w!r} has no coins "
                "to make one"
            )
        txid = w.sendtoaddress(w.getnewaddress("", "mweb"), PEGIN_AMOUNT)
        log.info("MWEB peg-in %s for block %d", txid, MWEB_HEIGHT)

    def connect(self, other: RegtestNode) -> None:
        """Connect to another node (once; after a restart call again)."""
        assert self.rpc is not None
        self.rpc.addnode(f"127.0.0.1:{other.p2p_port}", "onetry")

    def stop(self, timeout: float = 30.0, keep_datadir: bool = False) -> None:
        self._ready = False
        if self.proc is None:
            return
        if self.proc.poll() is None and self.rpc is not None:
            try:
                self.rpc.stop()
            except RpcError:
                pass
        for rpc in (self.rpc, self.wallet_rpc, *self._clients):
            if rpc is not None:
                rpc.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        if self._tmp is not None and not keep_datadir:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def running(self) -> bool:
        """Started, answering RPC and with its wallets loaded (not merely spawned)."""
        return self._ready and self.proc is not None and self.proc.poll() is None

    def restart(self, extra_args: list[str] | None = None) -> RegtestNode:
        """Stop and start again on the same ports and datadir (the node writes a new cookie)."""
        self.stop(keep_datadir=True)
        if extra_args is not None:
            self.extra_args = extra_args
        return self.start()

    def __enter__(self) -> RegtestNode:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
