"""Files that hold secrets (seeds, BFT keys, pairing secrets, tokens).

Created owner-only from the first byte (os.open with mode 0600, never a chmod after
writing), never overwritten, and refused when others can read them: a seed that was
world-readable must be treated as known to others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SecretFileError(Exception):
    pass


def write_secret(path: Path, text: str) -> None:
    """Create path with mode 0600 and write text; SecretFileError if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SecretFileError(f"{path} exists: a secret file is never overwritten") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def check_private(path: Path, what: str = "secret file") -> None:
    """SecretFileError naming the file when anyone but its owner and group may use it."""
    mode = os.stat(path).st_mode
    if mode & stat.S_IRWXO:
        raise SecretFileError(
            f"{what} {path} is readable by others (mode {stat.S_IMODE(mode):04o}): "
            f"treat it as known to them; chmod 600 it only if it never left this machine"
        )


def read_secret(path: Path, what: str = "secret file") -> str:
    check_private(path, what)
    return Path(path).read_text()
