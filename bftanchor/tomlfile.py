"""Reading a TOML config file whose paths are relative to the file itself."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def read_toml(path: Path, error: type[Exception], what: str = "config") -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from exc


def path_resolver(path: Path, error: type[Exception], what: str = "config"):
    """rel(value, key): a path from the file, absolute or relative to the file's folder."""
    base = Path(path).parent

    def rel(value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise error(f"{what} {path}: {key} must be a path string")
        p = Path(value)
        return p if p.is_absolute() else base / p

    return rel
