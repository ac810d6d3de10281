"""`bft-anchor tui` in a real terminal (tmux): a node's request arrives on the serial link,
the operator approves it with the keys, and the journal then holds the signature.

This is the path an operator takes: the console started from the command line, the
appliance inside it answering the link on a pty, the device behind HWI (the emulator).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_tui_world import World

from bftanchor.link.messages import MsgType
from bftanchor.link.pty import open_pty_pair
from bftanchor.link.transport import LinkClient, LinkEndpoint, LinkTimeout

TIMEOUT = 30.0


def _tmux() -> str:
    """tmux (scripts/setup.sh installs it); a test never installs packages itself."""
    found = shutil.which("tmux")
    if found is None:
        pytest.skip("tmux is not installed (scripts/setup.sh installs it)")
    return found


def _bft_anchor() -> list[str]:
    script = Path(sys.executable).parent / "bft-anchor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "anchorcli"]


class Terminal:
    """One tmux session on a private server, 160x50."""

    def __init__(self, tmux: str, name: str) -> None:
        self.base = [tmux, "-L", name]

    def start(self, command: str) -> None:
        # A C library in the test process may have put COLUMNS=80/LINES=24 into the real
        # environment (not os.environ); the pane must not inherit them, or the console
        # would draw 80x24 inside 160x50.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        subprocess.run([*self.base, "new-session", "-d", "-s", "tui", "-x", "160", "-y", "50",
                        command], check=True, timeout=20, env=env)

    def screen(self) -> str:
        out = subprocess.run([*self.base, "capture-pane", "-p", "-t", "tui"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "tui", *keys], check=True, timeout=20)

    def alive(self) -> bool:
        return subprocess.run([*self.base, "has-session", "-t", "tui"],
                              capture_output=True, timeout=20).returncode == 0

    def wait(self, cond: Callable[[str], bool], what: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if cond(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=20)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal(_tmux(), f"bft-anchor-test-{os.getpid()}")
    yield term
    term.close()


def write_appliance(world: World, d: Path) -> Path:
    d.mkdir()
    world.deployment.save(d / "deployment.json")
    cfg = d / "appliance.toml"
    cfg.write_text(
        'deployment = "deployment.json"\njournal = "journal.sqlite"\nvalidator_id = "v0"\n'
        'approval = "manual"\n\n[signer]\nkind = "hwi"\ndevice_type = "jade"\n'
        f'device_path = "{world.emu.path}"\n\n[limits]\nmax_fee_sat = 100000\n'
        "max_fee_rate = 200.0\n"
    )
    return cfg


def hello(client: LinkClient) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return client.request(MsgType.HELLO, {"protocol_version": 1}, timeout=0.5,
                                  retries=0).payload
        except LinkTimeout:
            assert time.monotonic() < deadline, "the console never answered on the link"


def test_one_approval_in_a_real_terminal(tmp_path: Path, terminal: Terminal) -> None:
    world = World(tmp_path)
    master, slave = open_pty_pair()
    try:
        cfg = write_appliance(world, tmp_path / "appliance")
        command = [*_bft_anchor(), "tui", "--config", str(cfg), "--link", slave,
                   "--poll", "0.3", "--device-poll", "2"]
        terminal.start(shlex.join(command))  # Textual draws on stderr: leave it on the tty
        client = LinkClient(LinkEndpoint(master), timeout=10)
        assert hello(client)["appliance_id"] == "v0"

        request = world.request(5)
        reply = client.request(MsgType.SIGN_REQUEST, request)
        assert reply.type == MsgType.PENDING, reply.payload
        screen = terminal.wait(lambda s: "POLICY ALLOWS" in s, "the request on screen")
        assert "OP_RETURN payload" in screen and "link ● connected" in screen
        assert "1 pending" in screen

        terminal.keys("a")
        terminal.wait(lambda s: "Sign request" in s and "Yes (y)" in s, "the confirmation")
        terminal.keys("y")
        # The queue empties before the status bar's next refresh: wait for both.
        screen = terminal.wait(
            lambda s: "No request is waiting" in s and "journal #1 e0/r5" in s,
            "the queue to empty and the status bar to show the signature",
        )
        assert "last sig never" not in screen

        # The node asks again and gets the signature the operator allowed.
        reply = client.request(MsgType.SIGN_REQUEST, request)
        assert reply.type == MsgType.SIGN_REPLY, reply.payload

        terminal.keys("2")
        screen = terminal.wait(lambda s: "— history" in s and "SIGNED" in s, "the history")
        assert reply.payload["psbt"] and "epoch 0  round 5" in screen
        terminal.keys("q")
        deadline = time.monotonic() + TIMEOUT
        while terminal.alive():
            assert time.monotonic() < deadline, "the console did not quit"
            time.sleep(0.1)
        log = (tmp_path / "appliance" / "tui.log").read_text()
        assert "Traceback" not in log, log
    finally:
        master.close()
        world.close()

    db = sqlite3.connect(f"file:{tmp_path / 'appliance' / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT txid, signed_psbt FROM signed").fetchall()
        decisions = [r[0] for r in db.execute("SELECT decision FROM decisions ORDER BY seq")]
    finally:
        db.close()
    assert len(rows) == 1 and rows[0][1], rows
    assert rows[0][1] == reply.payload["psbt"]
    assert decisions[-1] == "signed"
