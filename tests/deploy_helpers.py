"""Helpers for the bootstrap tests: run `bft-anchor` as an operator would, capture it."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from anchorcli.main import main


def run(*argv: object) -> tuple[int, str, str]:
    """`bft-anchor ARGV` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def assert_refused(result: tuple[int, str, str], *words: str) -> str:
    """Exit 2, one line on stderr naming the problem, no traceback."""
    rc, _out, err = result
    assert rc == 2, result
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def make_team(root: Path, n: int = 4, chain: str = "litecoin-regtest") -> list[Path]:
    """n appliances with software seeds, each with a BFT key and an epoch 0 share."""
    shares = []
    for i in range(n):
        d = root / f"op{i}"
        rc, _, err = run("appliance", "init", d / "appliance", "--validator-id", f"v{i}")
        assert rc == 0, err
        rc, pub, err = run("deploy", "keygen", "--out", d / "bft.key")
        assert rc == 0, err
        share = d / "share.json"
        rc, _, err = run("appliance", "share", "--config", d / "appliance" / "appliance.toml",
                         "--chain", chain, "--bft-pubkey", pub.strip(), "--out", share)
        assert rc == 0, err
        shares.append(share)
    return shares


def draft_args(shares: list[Path], out: Path, chain: str = "litecoin-regtest",
               epoch_length: int = 40, window: int = 10) -> list[object]:
    args: list[object] = ["deploy", "draft", "--chain", chain, "--epoch-length", epoch_length,
                          "--handover-window", window, "--out", out]
    for s in shares:
        args += ["--share", s]
    return args


def vout_to(node, txid: str, address: str) -> int:
    """The output paying address (Litecoin Core 0.21 lists "addresses", newer "address")."""
    for o in node.rpc.getrawtransaction(txid, True)["vout"]:
        spk = o["scriptPubKey"]
        if address in [spk.get("address"), *spk.get("addresses", [])]:
            return o["n"]
    raise AssertionError(f"{txid} pays nothing to {address}")


def edit_json(src: Path, dst: Path, **changes: object) -> Path:
    data = json.loads(src.read_text())
    data.update(changes)
    dst.write_text(json.dumps(data))
    return dst


class NullModem:
    """Two pty pairs joined back to back: a serial cable whose both ends are device paths.

    The appliance opens `a`, the node opens `b`, each by path, as they would open
    /dev/ttyUSB0 on two machines joined by a null-modem cable. The slave ends are held
    open here so a side that closes and reopens (a restart) finds the line still there.
    """

    def __init__(self) -> None:
        import os
        import threading
        import tty

        self._fds: list[int] = []
        ends = []
        for _ in range(2):
            m, s = os.openpty()
            tty.setraw(m)
            tty.setraw(s)
            ends.append((m, os.ttyname(s)))
            self._fds += [m, s]
        (self._ma, self.a), (self._mb, self.b) = ends
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        import os
        import select

        peer = {self._ma: self._mb, self._mb: self._ma}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(peer), [], [], 0.2)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    continue
                if data:
                    os.write(peer[fd], data)

    def close(self) -> None:
        import os

        self._stop.set()
        self._thread.join(2)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass


def node_toml(vid: str, listen: str, metrics: str, peers: dict[str, str], pow_url: str,
              cookie: Path, link: str, deployment: str = "deployment.json",
              qc_source: str = "../bft", bft_key: str = "bft.key",
              schedule: str = "", secret_file: str | None = None) -> str:
    """A node.toml as an operator writes it from `bft-anchor node --example-config`."""
    peer_text = "".join(f'\n[[peers]]\nid = "{p}"\naddress = "{a}"\n' for p, a in peers.items())
    return (
        f'validator_id = "{vid}"\nbft_key_file = "{bft_key}"\ndeployment = "{deployment}"\n'
        f'qc_source = "{qc_source}"\nlisten = "{listen}"\nmetrics = "{metrics}"\n\n'
        f'[appliance]\nlink = "{link}"\n'
        + (f'secret_file = "{secret_file}"\n' if secret_file else "")
        + f'{peer_text}\n'
        f'[pow]\nnodes = [{{ url = "{pow_url}", cookie = "{cookie}" }}]\n'
        + (f"\n[schedule]\n{schedule}\n" if schedule else "")
    )
