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


def edit_json(src: Path, dst: Path, **changes: object) -> Path:
    data = json.loads(src.read_text())
    data.update(changes)
    dst.write_text(json.dumps(data))
    return dst
