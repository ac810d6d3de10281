"""Install bft-anchor's udev rules, and a strict parser that proves they are well formed.

udev itself is lenient: a misspelt key or a missing quote makes it log a warning and skip the
rule, and the device silently stays unreachable (or the link loses its name).  The strict
parser here rejects anything outside the small udev subset our files use, so tests catch such
mistakes before an operator does.

CLI (wired by anchorcli/main.py as ``bft-anchor udev ...``):
    bft-anchor udev install [--dest DIR] [--no-reload] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bftanchor.usage import ArgumentParser

SYSTEM_RULES_DIR = Path("/etc/udev/rules.d")
# Directories udev reads rules from; installing into one of them warrants a reload.
_UDEV_RULE_DIRS = frozenset(
    {
        Path("/etc/udev/rules.d"),
        Path("/run/udev/rules.d"),
        Path("/usr/lib/udev/rules.d"),
        Path("/lib/udev/rules.d"),
    }
)
TRIGGER_SUBSYSTEMS = ("usb", "hidraw", "tty")


class UdevRuleError(ValueError):
    """A rules file does not parse; the message names the line."""


class InstallError(RuntimeError):
    """Installing or reloading failed; ``actions`` says what was done before the failure."""

    def __init__(self, message: str, actions: list[str]) -> None:
        super().__init__(message)
        self.actions = actions


# --------------------------------------------------------------------------- parser

# Keys that only match, only assign, or may do either (udev(7)).
_MATCH_ONLY = frozenset(
    {
        "ACTION",
        "DEVPATH",
        "KERNEL",
        "KERNELS",
        "SUBSYSTEM",
        "SUBSYSTEMS",
        "DRIVER",
        "DRIVERS",
        "ATTRS",
        "TAGS",
        "CONST",
        "TEST",
        "PROGRAM",
        "RESULT",
    }
)
_ASSIGN_ONLY = frozenset(
    {"OWNER", "GROUP", "MODE", "SECLABEL", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS"}
)
_EITHER = frozenset({"NAME", "SYMLINK", "ATTR", "SYSCTL", "ENV", "TAG"})
_KNOWN_KEYS = _MATCH_ONLY | _ASSIGN_ONLY | _EITHER
# Keys that need {attribute}, and those that may take one.
_ATTR_REQUIRED = frozenset({"ATTR", "ATTRS", "ENV", "SYSCTL", "CONST", "SECLABEL"})
_ATTR_OPTIONAL = frozenset({"IMPORT", "RUN", "TEST", "PROGRAM"})
_MATCH_OPS = ("==", "!=")
_ASSIGN_OPS = ("=", "+=", "-=", ":=")

_TOKEN = re.compile(
    r"""\s*
    (?P<key>[A-Z_]+)
    (?:\{(?P<attr>[^{}\s]+)\})?
    \s*(?P<op>==|!=|\+=|-=|:=|=)\s*
    "(?P<value>(?:[^"\\]|\\.)*)"
    \s*(?P<sep>,|$)
    """,
    re.VERBOSE,
)
_MODE = re.compile(r"^0?[0-7]{3}$")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash-continued lines; return (first line number, text) pairs."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        result.append((start, " ".join(part.strip() for part in pending)))
        pending = []
    if pending:
        raise UdevRuleError(f"line {start}: file ends inside a continued line")
    return result


def _parse_rule(lineno: int, line: str) -> list[dict[str, Any]]:
    tokens: list[dict[str, Any]] = []
    pos = 0
    while pos < len(line):
        match = _TOKEN.match(line, pos)
        if not match:
            snippet = line[pos:].strip()[:40]
            raise UdevRuleError(
                f'line {lineno}: expected KEY=="value" / KEY="value" / KEY+="value" at {snippet!r}'
            )
        key, attr, op, value = match["key"], match["attr"], match["op"], match["value"]
        if key not in _KNOWN_KEYS:
            raise UdevRuleError(f"line {lineno}: unknown key {key!r}")
        if attr is None and key in _ATTR_REQUIRED:
            raise UdevRuleError(f"line {lineno}: {key} needs an {{attribute}}")
        if attr is not None and key not in _ATTR_REQUIRED | _ATTR_OPTIONAL:
            raise UdevRuleError(f"line {lineno}: {key} takes no {{attribute}}")
        if key in _MATCH_ONLY and op not in _MATCH_OPS:
            raise UdevRuleError(f"line {lineno}: {key} can only be matched (== or !=), not {op}")
        if key in _ASSIGN_ONLY and op not in _ASSIGN_OPS:
            raise UdevRuleError(f"line {lineno}: {key} can only be assigned, not matched")
        if key in {"LABEL", "GOTO"} and op != "=":
            raise UdevRuleError(f"line {lineno}: {key} takes '=' only")
        if key == "MODE" and not _MODE.match(value):
            raise UdevRuleError(f"line {lineno}: MODE must be octal like 0660, not {value!r}")
        if key in {"GROUP", "OWNER", "LABEL", "GOTO"} and not value:
            raise UdevRuleError(f"line {lineno}: {key} needs a value")
        tokens.append({"key": key, "attr": attr, "op": op, "value": value})
        pos = match.end()
        if match["sep"] == ",":
            if pos >= len(line) or not line[pos:].strip():
                raise UdevRuleError(f"line {lineno}: trailing comma")
    if not any(t["op"] in _ASSIGN_OPS for t in tokens):
        raise UdevRuleError(f"line {lineno}: rule only matches and never assigns anything")
    return tokens


def parse_rules(text: str) -> list[dict[str, Any]]:
    """Parse udev rules text strictly; return one dict per rule.

    Each dict is ``{"line": first line number, "text": the rule, "tokens": [{"key", "attr",
    "op", "value"}, ...]}``.  Accepted: comments and blank lines, backslash continuations,
    comma-separated ``KEY[{attr}]OP"value"`` with known keys, match operators on match keys
    and assignment operators on assignment keys, and every GOTO naming a LABEL in the file.
    Anything else raises UdevRuleError.
    """
    rules: list[dict[str, Any]] = []
    for lineno, line in _logical_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        rules.append({"line": lineno, "text": stripped, "tokens": _parse_rule(lineno, stripped)})
    labels = {t["value"] for r in rules for t in r["tokens"] if t["key"] == "LABEL"}
    for rule in rules:
        for token in rule["tokens"]:
            if token["key"] == "GOTO" and token["value"] not in labels:
                raise UdevRuleError(
                    f"line {rule['line']}: GOTO {token['value']!r} has no matching LABEL"
                )
    return rules


# --------------------------------------------------------------------------- install


def default_rules_dir() -> Path:
    """The repository's udev/ directory, next to the package."""
    return Path(__file__).resolve().parents[2] / "udev"


def rules_files(source: Path | None = None) -> list[Path]:
    """The *.rules files that install_rules would copy, in name order."""
    directory = source if source is not None else default_rules_dir()
    files = sorted(p for p in directory.glob("*.rules") if p.is_file())
    if not files:
        raise InstallError(f"no *.rules files in {directory}", [])
    return files


def _is_system_dir(dest: Path) -> bool:
    try:
        resolved = dest.resolve()
    except OSError:
        return False
    return any(resolved == d or resolved == d.resolve() for d in _UDEV_RULE_DIRS)


def _write_atomically(target: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so udev never reads half a rules file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install_rules(
    dest: Path = SYSTEM_RULES_DIR,
    reload: bool = True,
    *,
    source: Path | None = None,
) -> list[str]:
    """Copy bft-anchor's rules into ``dest``; return one line per thing done or skipped.

    Idempotent: a file whose content is already in place is left alone.  Every file is parsed
    first, so a broken rules file is never installed.  udev is reloaded
    (``udevadm control --reload-rules && udevadm trigger``) only if ``reload`` is set, ``dest``
    is a directory udev reads, something changed and udevadm exists; otherwise the returned
    lines say why not.  Raises InstallError (with the actions so far) or PermissionError.
    """
    dest = Path(dest)
    files = rules_files(source)
    actions: list[str] = []
    for path in files:
        try:
            parse_rules(path.read_text(encoding="utf-8"))
        except UdevRuleError as exc:
            raise InstallError(f"{path}: {exc}", actions) from exc

    try:
        if not dest.is_dir():
            if dest.exists():
                raise InstallError(f"{dest} exists and is not a directory", actions)
            dest.mkdir(parents=True)
            actions.append(f"created directory {dest}")

        changed = False
        for path in files:
            data = path.read_bytes()
            target = dest / path.name
            if target.is_file() and target.read_bytes() == data:
                actions.append(f"unchanged {target}")
                continue
            verb = "updated" if target.exists() else "installed"
            _write_atomically(target, data)
            actions.append(f"{verb} {target}")
            changed = True
    except PermissionError as exc:
        raise InstallError(
            f"permission denied: {exc.filename or dest} (installing into {dest} needs root)",
            actions,
        ) from exc

    if not reload:
        actions.append("skipped reload: --no-reload given")
    elif not _is_system_dir(dest):
        actions.append(f"skipped reload: {dest} is not a directory udev reads")
    elif not changed:
        actions.append("skipped reload: no rules changed")
    else:
        udevadm = shutil.which("udevadm")
        if udevadm is None:
            actions.append("skipped reload: udevadm not found; reboot or reload udev by hand")
        else:
            commands = [
                [udevadm, "control", "--reload-rules"],
                [udevadm, "trigger", *(f"--subsystem-match={s}" for s in TRIGGER_SUBSYSTEMS)],
            ]
            for command in commands:  # the second runs only if the first succeeded (&&)
                result = subprocess.run(command, capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    detail = (result.stderr or result.stdout).strip()
                    raise InstallError(
                        f"{' '.join(command)} failed (exit {result.returncode}): {detail}",
                        actions,
                    )
                actions.append(f"ran {' '.join(command)}")
    return actions


# --------------------------------------------------------------------------- CLI


def build_parser(prog: str = "bft-anchor udev") -> argparse.ArgumentParser:
    """The argparse parser for ``bft-anchor udev``; exposed so the CLI can show its help."""
    parser = ArgumentParser(
        prog=prog,
        description="Manage the udev rules for bft-anchor's signing devices and serial link.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    install = commands.add_parser(
        "install",
        help="copy the rules into a udev rules directory and reload udev",
        description=(
            "Copy 51-bft-anchor-hardware-wallets.rules (signing devices) and "
            "60-bft-anchor-serial-link.rules (/dev/bft-anchor-link) into DIR.  Files already "
            "in place are left alone.  When DIR is a directory udev reads and something "
            "changed, runs 'udevadm control --reload-rules && udevadm trigger'.  Writing to "
            f"{SYSTEM_RULES_DIR} needs root."
        ),
        epilog=(
            "After installing, add the appliance's account to groups plugdev and dialout, "
            "and pin the serial link by serial number (see udev/README.md)."
        ),
    )
    install.add_argument(
        "--dest",
        metavar="DIR",
        type=Path,
        default=SYSTEM_RULES_DIR,
        help=f"destination directory (default: {SYSTEM_RULES_DIR}); created if missing",
    )
    install.add_argument(
        "--no-reload",
        dest="reload",
        action="store_false",
        help="do not run udevadm, only copy",
    )
    install.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object {"ok", "dest", "actions", "error"} on standard output',
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``bft-anchor udev``; ``argv`` excludes the ``udev`` word itself.

    Exit status: 0 done, 1 install or reload failed (including permission denied), 2 usage.
    """
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.command != "install":  # pragma: no cover - argparse enforces the choices
        return 2
    error: str | None = None
    try:
        actions = install_rules(args.dest, reload=args.reload)
    except InstallError as exc:
        actions, error = exc.actions, str(exc)
    except OSError as exc:
        actions, error = [], f"{exc.filename or args.dest}: {exc.strerror or exc}"
    if args.json:
        print(
            json.dumps(
                {"ok": error is None, "dest": str(args.dest), "actions": actions, "error": error}
            )
        )
    else:
        for line in actions:
            print(line)
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
    return 0 if error is None else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
