"""A new operator's first hour, scripted in a real terminal (tmux), screens saved as SVG.

It starts as the README does: `bft-anchor devnet --datadir D` runs a whole local network
(a regtest node, four validators each with a Jade emulator behind HWI) for one epoch and
keeps it in D. Then the operator of validator v0 takes over v0's appliance from D: its
device plugged in again (the emulator on v0's seed and saved state), `bft-anchor appliance
serve --config D/validators/v0/appliance.toml --approval manual` on one end of a pty (the
serial link), the console `bft-anchor tui --control` in tmux, driven with the keys a person
presses. This script plays the node on the link's other end, from what the devnet kept:
its BFT chain (the devnet's simulated validators), its coin (where the devnet's last
checkpoint left it) and the validators' seeds (for epoch 1's keys):

  1. a checkpoint request arrives and is approved,
  2. the next one is refused, with a reason,
  3. the rotation ceremony: the key, the record, a WRONG fingerprint first (the console
     warns the record may be forged and restarts the step), then the right one, the
     wallet registered on the device (under the deployment's and epoch's name), the
     appliance armed; the device screen lists epoch 0's and epoch 1's wallets,
  4. the handover arrives and is approved.

Each step's screen is captured from tmux (with colours) and written as SVG.

    .venv/bin/python tests/first_hour.py [--out docs/screens]

The test tests/test_tui_first_hour.py runs the same script into a temporary directory.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from embit.psbt import PSBT
from rich.console import Console
from rich.text import Text
from test_tui_tmux import TIMEOUT, Terminal, _bft_anchor, _tmux, hello

from anchornode.bftsim import SimulatedBFTChain
from anchornode.devnet import DevnetOptions, _point_at_device
from appliance.emulator import JadeEmulator
from appliance.journal import Journal
from appliance.signers.software import SoftwareSigner
from bftanchor.deployment import Deployment
from bftanchor.descriptor import EpochMultisig
from bftanchor.link.messages import MsgType
from bftanchor.link.pty import open_pty_pair
from bftanchor.link.transport import LinkClient, LinkEndpoint
from bftanchor.payload import Payload
from bftanchor.template import Coin, Outpoint, build_checkpoint_psbt
from tui.decode import wallet_fingerprint

# One short epoch: rounds 0..11, checkpoints every 3 rounds, the handover window 8..11.
DEVNET_ARGS = ["--epochs", "1", "--rounds-per-epoch", "12", "--interval", "3"]
COLS, ROWS = 120, 36


class Recorder:
    """tmux with a fixed size whose screens are saved as numbered SVG files."""

    def __init__(self, term: Terminal, out: Path) -> None:
        self.term = term
        self.out = out
        self.saved: list[Path] = []

    def start(self, command: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        subprocess.run([*self.term.base, "new-session", "-d", "-s", "tui", "-x", str(COLS),
                        "-y", str(ROWS), command], check=True, timeout=20, env=env)

    def ansi(self) -> str:
        return subprocess.run([*self.term.base, "capture-pane", "-e", "-p", "-t", "tui"],
                              capture_output=True, text=True, timeout=20).stdout

    def snap(self, name: str, title: str) -> Path:
        console = Console(record=True, width=COLS, file=io.StringIO(), force_terminal=True,
                          color_system="truecolor", legacy_windows=False)
        for line in self.ansi().splitlines()[:ROWS]:
            console.print(Text.from_ansi(line), overflow="crop", no_wrap=True)
        path = self.out / f"first-hour-{len(self.saved):02d}-{name}.svg"
        path.write_text(console.export_svg(title=title))
        self.saved.append(path)
        return path

    def keys(self, *keys: str) -> None:
        self.term.keys(*keys)

    def type(self, text: str) -> None:
        subprocess.run([*self.term.base, "send-keys", "-t", "tui", "-l", text], check=True,
                       timeout=20)

    def wait(self, *needles: str, timeout: float = TIMEOUT) -> str:
        return self.term.wait(lambda s: all(n in s for n in needles), " and ".join(needles),
                              timeout)


def run_devnet(out: Path, datadir: Path) -> tuple[Path, str]:
    """The README's first step, its output saved as a screen; returns the screen and the
    txid of the devnet's last checkpoint (the coin's current place)."""
    result = subprocess.run([*_bft_anchor(), "devnet", "--datadir", str(datadir), *DEVNET_ARGS],
                            capture_output=True, text=True, timeout=600)
    text = result.stdout + result.stderr
    console = Console(record=True, width=COLS, file=io.StringIO())
    console.print(f"$ bft-anchor devnet --datadir {datadir} {' '.join(DEVNET_ARGS)}",
                  style="bold")
    console.print(Text(text[-4000:]))
    console.print(f"exit status {result.returncode}", style="bold")
    path = out / "first-hour-00-devnet.svg"
    path.write_text(console.export_svg(title="bft-anchor devnet"))
    assert result.returncode == 0, text[-2000:]
    checkpoints = re.findall(r"epoch 0 round +\d+ txid ([0-9a-f]{64})", text)
    assert checkpoints, text[-2000:]
    return path, checkpoints[-1]


class DevnetNode:
    """The node's side of v0's link, built from what the devnet kept in its datadir."""

    def __init__(self, datadir: Path, tip_txid: str) -> None:
        self.deployment = Deployment.load(datadir / "deployment.json")
        self.rec0 = rec0 = self.deployment.epoch0
        # The devnet's BFT chain: its simulated validators' keys come from its seed.
        self.sim = SimulatedBFTChain.create(rec0.n, rec0.end_round - rec0.start_round + 1,
                                            DevnetOptions().seed)
        assert [v.bft_pubkey for v in self.sim.validators] == [v.bft_pubkey
                                                              for v in rec0.validators]
        self.sim.records[0] = rec0
        vdir = datadir / "validators"
        keys = {v.id: SoftwareSigner.from_file(vdir / v.id / "seed.txt").pow_key(1)
                for v in rec0.validators}  # what each validator's `appliance share` gives
        self.rec1 = self.sim.make_record(1, keys)
        self.ms0, self.ms1 = EpochMultisig(rec0), EpochMultisig(self.rec1)
        journal = Journal(vdir / "v0" / "journal.sqlite", self.deployment.genesis)
        try:
            entry = journal.state().by_txid(tip_txid)
        finally:
            journal.close()
        assert entry is not None, f"v0's journal holds no {tip_txid}"
        self.coin = entry.coin

    def request(self, round_: int, *, handover: bool = False, fee: int = 600) -> dict[str, Any]:
        """A checkpoint request as the devnet's honest initiator builds it."""
        qc = self.sim.qc(0, round_)
        payload = Payload(0, qc.round, qc.commit_state_id, magic=self.deployment.magic)
        dest = self.ms1 if handover else self.ms0
        psbt = build_checkpoint_psbt(self.coin, self.ms0, payload, dest, fee)
        return {"psbt": psbt.to_string(), "qc": qc.to_json(), "records": [self.rec0.to_json()]}

    def signed(self, reply: Any) -> None:
        """The checkpoint went out: the coin is now its output 1."""
        tx = PSBT.from_string(reply.payload["psbt"]).tx
        self.coin = Coin(Outpoint(tx.txid().hex(), 1), tx.vout[1].value, 0)


def _wait_for_socket(path: Path, serve: subprocess.Popen) -> None:
    """Until the appliance answers on its control socket (the devnet's old one may linger)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert time.monotonic() < deadline and serve.poll() is None, "no control socket"
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                return
        except OSError:
            time.sleep(0.1)


def first_hour(work: Path, out: Path, term: Terminal) -> list[Path]:
    """The scenario; returns the SVG files written (raises AssertionError on any step)."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    datadir = work / "devnet"
    devnet_screen, tip = run_devnet(out, datadir)
    world = DevnetNode(datadir, tip)
    vdir = datadir / "validators" / "v0"
    cfg = vdir / "appliance.toml"
    # v0's device, plugged in again: the same seed and the state the devnet left on it.
    emu = JadeEmulator(port=0, mnemonic=(vdir / "seed.txt").read_text().strip(),
                       network="testnet", state_path=vdir / "jade-state.json")
    emu.start()
    _point_at_device(cfg, emu.path)
    master, slave = open_pty_pair()
    serve: subprocess.Popen | None = None
    rec = Recorder(term, out)
    rec.saved.append(devnet_screen)
    try:
        control = vdir / "control.sock"
        log = open(work / "appliance-serve.log", "wb")
        serve = subprocess.Popen([*_bft_anchor(), "appliance", "serve", "--config", str(cfg),
                                  "--link", slave, "--approval", "manual"],
                                 stdout=log, stderr=subprocess.STDOUT)
        node = LinkClient(LinkEndpoint(master), timeout=10)
        assert hello(node)["appliance_id"] == "v0"
        _wait_for_socket(control, serve)
        rec.start(shlex.join([*_bft_anchor(), "tui", "--config", str(cfg), "--control",
                              str(control), "--poll", "0.3", "--device-poll", "2"]))
        rec.wait("No request is waiting", "MANUAL")

        # 1. The node asks for a checkpoint; the operator reads it and approves.
        first = world.request(6)
        assert node.request(MsgType.SIGN_REQUEST, first).type == MsgType.PENDING
        rec.wait("POLICY ALLOWS", "round 6")
        rec.snap("request", "a checkpoint request waits for the operator")
        rec.keys("a")
        rec.wait("Sign request", "Yes (y)")
        rec.snap("approve", "approving: what will be signed, check it on the device")
        rec.keys("y")
        rec.wait("No request is waiting", "e0/r6")
        reply = node.request(MsgType.SIGN_REQUEST, first)
        assert reply.type == MsgType.SIGN_REPLY, reply.payload
        world.signed(reply)  # the next requests spend the checkpoint's output 1

        # 2. The next request is refused, with a reason.
        second = world.request(7)
        assert node.request(MsgType.SIGN_REQUEST, second).type == MsgType.PENDING
        rec.wait("POLICY ALLOWS", "round 7")
        rec.keys("r")
        rec.wait("Refuse request")
        rec.type("commit not seen on our BFT node yet")
        rec.wait("commit not seen on our BFT node yet")
        rec.snap("refuse-with-reason", "refusing, with the reason the journal keeps")
        rec.keys("Enter")
        rec.wait("No request is waiting")
        refused = node.request(MsgType.SIGN_REQUEST, second)
        assert refused.type == MsgType.REFUSAL, refused.payload
        rec.keys("2")
        rec.wait("— history", "commit not seen")
        rec.snap("history", "the journal: signed, then refused by the operator")

        # 3. The rotation ceremony for epoch 1.
        record = work / "epoch1.json"
        record.write_text(json.dumps(world.rec1.to_json(), indent=1))
        rec.keys("4")
        rec.wait("Key rotation ceremony")
        rec.keys("k")
        rec.wait("(a) this appliance's key")
        rec.type(str(record))
        rec.keys("Enter")
        rec.wait("certified by", "hidden until you type")
        rec.snap("record-verified", "the record is certified; its fingerprint is not shown")
        right = wallet_fingerprint(world.ms1)
        rec.type("0000 0000")
        rec.wait("0000 0000")
        rec.keys("Enter")
        rec.wait("may be forged")
        rec.snap("fingerprint-mismatch", "a wrong fingerprint: the record may be forged")
        rec.type(right)
        rec.keys("Enter")
        rec.wait("✓ (c) confirm the wallet fingerprint")
        rec.keys("g")
        rec.wait("Register epoch 1")
        rec.keys("y")
        rec.wait("✓ (d) register")
        rec.keys("i")
        rec.wait("Arm the appliance")
        rec.keys("y")
        rec.wait("✓ (e) arm", "Done:")
        rec.snap("armed", "the ceremony done: registered on the device, the appliance armed")
        rec.keys("3")  # the device's wallets, by epoch, under the deployment's names
        rec.wait(world.deployment.wallet_name(0), world.deployment.wallet_name(1),
                 wallet_fingerprint(world.ms1))
        rec.snap("device-wallets", "the device's wallets: epoch 0's and epoch 1's, named")

        # 4. The handover.
        handover = world.request(9, handover=True)  # inside the window (rounds 8..11)
        assert node.request(MsgType.SIGN_REQUEST, handover).type == MsgType.PENDING
        rec.keys("1")
        rec.wait("HANDOVER", "new wallet fingerprint", "the ceremony installed this record")
        rec.snap("handover", "the handover: the new wallet's fingerprint and address")
        rec.keys("a")
        rec.wait("Sign request", "HANDOVER to epoch 1")
        rec.keys("y")
        rec.wait("No request is waiting", "e0/r9")
        done = node.request(MsgType.SIGN_REQUEST, handover)
        assert done.type == MsgType.SIGN_REPLY, done.payload
        rec.snap("handover-signed", "the handover signed; the coin is epoch 1's")
        rec.keys("q")  # nothing waits: it quits without asking
        deadline = time.monotonic() + TIMEOUT
        while term.alive():
            assert time.monotonic() < deadline, "the console did not quit"
            time.sleep(0.2)
        tui_log = (cfg.parent / "tui.log").read_text()
        assert "Traceback" not in tui_log, tui_log
        assert "operator refused request" in tui_log and "commit not seen" in tui_log
        return rec.saved
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(timeout=20)
        master.close()
        emu.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/screens"),
                   help="where the SVG screens go (default docs/screens)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bft-anchor-first-hour-") as tmp:
        term = Terminal(_tmux(), f"bft-anchor-first-hour-{os.getpid()}")
        try:
            saved = first_hour(Path(tmp), args.out, term)
        finally:
            term.close()
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
