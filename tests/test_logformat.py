"""Log lines under systemd carry journald's priority prefix (issue 13, item 6)."""

from __future__ import annotations

import os
import subprocess
import sys

from anchorcli.logformat import JOURNAL_FORMAT, formatter, stderr_is_journal


def _run(env_extra: dict[str, str], stderr_path) -> str:
    """The CLI's logging set-up with stderr on a file, as systemd hands it the journal."""
    with open(stderr_path, "wb") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ)
        env.update({k: v.format(dev=st.st_dev, ino=st.st_ino) for k, v in env_extra.items()})
        code = ("import logging, sys; from anchorcli.main import _setup_logging; "
                "_setup_logging(1); log = logging.getLogger('bft_anchor.node'); "
                "log.info('started'); log.warning('peer v2 unreachable'); "
                "log.error('no PoW node answered')")
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env, timeout=60,
                       check=True)
    return stderr_path.read_text()


def test_under_systemd_lines_carry_priorities(tmp_path):
    text = _run({"JOURNAL_STREAM": "{dev}:{ino}"}, tmp_path / "journal")
    assert text.splitlines() == [
        "<6>bft_anchor.node: started",
        "<4>bft_anchor.node: peer v2 unreachable",
        "<3>bft_anchor.node: no PoW node answered",
    ]


def test_on_a_terminal_lines_carry_time_and_level(tmp_path):
    text = _run({"JOURNAL_STREAM": "1:2"}, tmp_path / "term")  # another stream's id
    lines = text.splitlines()
    assert len(lines) == 3 and not lines[0].startswith("<")
    assert " WARNING bft_anchor.node: peer v2 unreachable" in lines[1]


def test_helpers(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not stderr_is_journal()
    assert formatter()._fmt != JOURNAL_FORMAT
