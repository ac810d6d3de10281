"""Reading a strict TOML config file whose paths are relative to the file itself.

Strict: every key must be one the reader knows. An operator's typo (`max_fe_sat`
under [limits]) silently ignored would leave a safety limit at its default, so an
unknown key is refused at start, naming the file, the section and the key, with the
nearest known key as a hint.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# A schema maps each known key to None (any value), a nested schema (a table), or a
# one-element list holding the schema of an array's tables (plain entries pass).
Schema = Mapping[str, Any]


def read_toml(
    path: Path, error: type[Exception], what: str = "config", schema: Schema | None = None
) -> dict[str, Any]:
    """The file's tables; `error` names the file for unreadable, invalid or unknown keys."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from exc
    if schema is not None:
        check_keys(data, schema, lambda msg: error(f"{what} {path}: {msg}"))
    return data


def check_keys(data: Mapping[str, Any], schema: Schema, fail: Any, section: str = "") -> None:
    """Raise fail(message) for the first key `schema` does not know."""
    for key, value in data.items():
        name = f"{section}.{key}" if section else key
        if key not in schema:
            near = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
            hint = (
                f"; did you mean {near[0]!r}?"
                if near
                else f" (known keys: {', '.join(sorted(schema))})"
            )
            where = f"in [{section}]" if section else "at the top level"
            raise fail(f"unknown key {key!r} {where}{hint}")
        sub = schema[key]
        if isinstance(sub, Mapping):
            if not isinstance(value, Mapping):
                raise fail(f"{name} must be a table ([{name}])")
            check_keys(value, sub, fail, name)
        elif isinstance(sub, list):
            if not isinstance(value, list):
                raise fail(f"{name} must be an array")
            for item in value:
                if isinstance(item, Mapping):
                    check_keys(item, sub[0], fail, name)


def path_resolver(path: Path, error: type[Exception], what: str = "config"):
    """rel(value, key): a path from the file, absolute or relative to the file's folder."""
    base = Path(path).parent

    def rel(value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise error(f"{what} {path}: {key} must be a path string")
        p = Path(value)
        return p if p.is_absolute() else base / p

    return rel
