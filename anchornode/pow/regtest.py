"""Start and stop a private regtest PoW node (bitcoind where present, else litecoind).

Ports are free loopback ports, the datadir is temporary unless given, and stop()
always leaves no process behind: RPC stop, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from anchornode.pow.rpc import PowRpc, RpcError, url_with_auth
from anchornode.procutil import die_with_parent

log = logging.getLogger("bft_anchor.pow")

DAEMONS = (("bitcoind", "bitcoin-regtest"), ("litecoind", "litecoin-regtest"))


class NodeError(Exception):
    pass


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
                    self.rpc = PowRpc(url_with_auth(self.url, cookie_file=cookie))
                    self.rpc.getblockchaininfo()
                    break
                except (RpcError, ValueError):
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise NodeError(f"{self.binary} did not answer RPC within {timeout:.0f} s")
            time.sleep(0.1)
        return self

    def create_wallet(self, name: str = "miner") -> PowRpc:
        assert self.rpc is not None
        try:
            self.rpc.createwallet(name)
        except RpcError as exc:
            if "already exists" not in str(exc):
                raise
            try:
                self.rpc.loadwallet(name)
            except RpcError as exc2:
                if "already loaded" not in str(exc2):
                    raise
        self.wallet_rpc = self.client(f"/wallet/{name}")
        return self.wallet_rpc

    def client(self, path: str = "") -> PowRpc:
        """A new RPC client (one per thread); closed when the node stops."""
        assert self.rpc is not None
        c = PowRpc(self.rpc.url.rstrip("/") + path)
        self._clients.append(c)
        return c

    def mine(self, blocks: int = 1, address: str | None = None) -> list[str]:
        assert self.rpc is not None
        if address is None:
            w = self.wallet_rpc or self.create_wallet()
            address = w.getnewaddress()
        return self.rpc.generatetoaddress(blocks, address)

    def connect(self, other: RegtestNode) -> None:
        assert self.rpc is not None
        self.rpc.addnode(f"127.0.0.1:{other.p2p_port}", "onetry")

    def stop(self, timeout: float = 30.0) -> None:
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
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RegtestNode:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
