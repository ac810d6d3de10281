"""Log lines fit for where they go: a terminal, or systemd's journal.

Under systemd (JOURNAL_STREAM names the very stream standard error is), each line
starts with its sd-daemon priority prefix ("<3>" for errors, "<4>" warnings, "<6>"
info, "<7>" debug), which journald strips and stores as the entry's priority, so
`journalctl -p warning` filters; the timestamp is left to the journal. Elsewhere a
line carries its own time and level.
"""

from __future__ import annotations

import logging
import os
import sys

TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

# syslog priorities (sd-daemon(3)) by logging level
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6), (logging.DEBUG, 7))


def stderr_is_journal(stream=None) -> bool:
    """True when standard error is connected to the journal (systemd.exec(5), JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":", 1))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for lvl, p in PRIORITIES if record.levelno >= lvl), 7)
        text = super().format(record)
        # One entry per line: a traceback's lines each keep the priority.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def formatter(stream=None) -> logging.Formatter:
    return JournalFormatter() if stderr_is_journal(stream) else logging.Formatter(TERMINAL_FORMAT)
