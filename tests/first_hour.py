"""A new operator's first hour, scripted in a real terminal (tmux), screens saved as SVG.

The appliance runs as `bft-anchor appliance serve --approval manual` on one end of a pty
(the serial link); this script plays the node on the other end, with a simulated BFT
chain and a Jade emulator behind HWI (the test world). The operator's console is
`bft-anchor tui --control` in tmux, driven with the keys a person presses:

  1. a checkpoint request arrives and is approved,
  2. the next one is refused, with a reason,
  3. the rotation ceremony: the key, the record, a WRONG fingerprint first (the console
     warns the record may be forged and restarts the step), then the right one, the
     wallet registered on the device, the appliance armed,
  4. the handover arrives and is approved.

Each step's screen is captured from tmux (with colours) and written as SVG.

    .venv/bin/python tests/first_hour.py [--devnet] [--out docs/screens]

`--devnet` first runs `bft-anchor devnet --datadir` as the README's first step and saves
its output as a screen too (it takes a minute or two: a real regtest node). The test
tests/test_tui_first_hour.py runs the same script into a temporary directory.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text
from test_tui_tmux import TIMEOUT, Terminal, _bft_anchor, _tmux, hello, write_appliance
from test_tui_world import World

from bftanchor.link.messages import MsgType
from bftanchor.link.pty import open_pty_pair
from bftanchor.link.transport import LinkClient, LinkEndpoint
from bftanchor.template import Coin, Outpoint
from tui.decode import wallet_fingerprint

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
        path = self.out / f"first-hour-{len(self.saved) + 1:02d}-{name}.svg"
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


def run_devnet(out: Path, datadir: Path) -> Path:
    """The README's first step, its output saved as a screen."""
    result = subprocess.run([*_bft_anchor(), "devnet", "--datadir", str(datadir),
                             "--epochs", "1", "--signer", "software"],
                            capture_output=True, text=True, timeout=900)
    console = Console(record=True, width=COLS, file=io.StringIO())
    console.print(f"$ bft-anchor devnet --datadir {datadir} --epochs 1 --signer software",
                  style="bold")
    console.print(Text((result.stdout + result.stderr)[-4000:]))
    console.print(f"exit status {result.returncode}", style="bold")
    path = out / "first-hour-00-devnet.svg"
    path.write_text(console.export_svg(title="bft-anchor devnet"))
    return path


def first_hour(work: Path, out: Path, term: Terminal) -> list[Path]:
    """The scenario; returns the SVG files written (raises AssertionError on any step)."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    world = World(work)
    master, slave = open_pty_pair()
    serve: subprocess.Popen | None = None
    rec = Recorder(term, out)
    try:
        cfg = write_appliance(world, work / "appliance")
        control = cfg.parent / "control.sock"
        log = open(work / "appliance-serve.log", "wb")
        serve = subprocess.Popen([*_bft_anchor(), "appliance", "serve", "--config", str(cfg),
                                  "--link", slave, "--approval", "manual"],
                                 stdout=log, stderr=subprocess.STDOUT)
        node = LinkClient(LinkEndpoint(master), timeout=10)
        assert hello(node)["appliance_id"] == "v0"
        deadline = time.monotonic() + TIMEOUT
        while not control.exists():
            assert time.monotonic() < deadline and serve.poll() is None, "no control socket"
            time.sleep(0.1)
        rec.start(shlex.join([*_bft_anchor(), "tui", "--config", str(cfg), "--control",
                              str(control), "--poll", "0.3", "--device-poll", "2"]))
        rec.wait("No request is waiting", "MANUAL")

        # 1. The node asks for a checkpoint; the operator reads it and approves.
        first = world.request(5)
        assert node.request(MsgType.SIGN_REQUEST, first).type == MsgType.PENDING
        rec.wait("POLICY ALLOWS", "round 5")
        rec.snap("request", "a checkpoint request waits for the operator")
        rec.keys("a")
        rec.wait("Sign request", "Yes (y)")
        rec.snap("approve", "approving: what will be signed, check it on the device")
        rec.keys("y")
        rec.wait("No request is waiting", "journal #1 e0/r5")
        reply = node.request(MsgType.SIGN_REQUEST, first)
        assert reply.type == MsgType.SIGN_REPLY, reply.payload
        signed_txid = reply.payload["summary"]["txid"] if "summary" in reply.payload else None
        # The coin moved: the next requests spend the checkpoint's output 1.
        from embit.psbt import PSBT

        tx = PSBT.from_string(reply.payload["psbt"]).tx
        signed_txid = signed_txid or tx.txid().hex()
        world.coin = Coin(Outpoint(signed_txid, 1), tx.vout[1].value, 0)

        # 2. The next request is refused, with a reason.
        second = world.request(10)
        assert node.request(MsgType.SIGN_REQUEST, second).type == MsgType.PENDING
        rec.wait("POLICY ALLOWS", "round 10")
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
        record = world.write_record(str(work / "epoch1.json"))
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

        # 4. The handover.
        handover = world.request(95, handover=True)
        assert node.request(MsgType.SIGN_REQUEST, handover).type == MsgType.PENDING
        rec.keys("1")
        rec.wait("HANDOVER", "new wallet fingerprint", "the ceremony installed this record")
        rec.snap("handover", "the handover: the new wallet's fingerprint and address")
        rec.keys("a")
        rec.wait("Sign request", "HANDOVER to epoch 1")
        rec.keys("y")
        rec.wait("No request is waiting", "journal #2 e0/r95")
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
        world.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/screens"),
                   help="where the SVG screens go (default docs/screens)")
    p.add_argument("--devnet", action="store_true",
                   help="first run `bft-anchor devnet --datadir` (a real regtest node)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bft-anchor-first-hour-") as tmp:
        work = Path(tmp)
        saved = []
        if args.devnet:
            args.out.mkdir(parents=True, exist_ok=True)
            saved.append(run_devnet(args.out, work / "devnet"))
        term = Terminal(_tmux(), f"bft-anchor-first-hour-{os.getpid()}")
        try:
            saved += first_hour(work, args.out, term)
        finally:
            term.close()
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
