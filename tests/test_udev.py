"""udev rules: they parse strictly, cover every usb id the firmware profiles name (and no
other), give the serial link a stable name, and install idempotently without touching udev
for a non-system directory."""

from __future__ import annotations

import fnmatch
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from appliance.devices import udev
from appliance.devices.profiles import load_profiles
from appliance.devices.udev import (
    InstallError,
    UdevRuleError,
    install_rules,
    main,
    parse_rules,
)
from bftanchor.usage import UsageError

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "udev"
WALLETS = RULES_DIR / "51-bft-anchor-hardware-wallets.rules"
LINK = RULES_DIR / "60-bft-anchor-serial-link.rules"
LINK_ADAPTERS = {("0403", "6001"), ("10c4", "ea60"), ("1a86", "7523"), ("067b", "2303")}


def _values(rule: dict[str, Any], key: str, attr: str | None = None, op: str = "==") -> list[str]:
    return [
        t["value"]
        for t in rule["tokens"]
        if t["key"] == key and t["attr"] == attr and t["op"] == op
    ]


def _ids(rule: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(vendor, product alternatives) named by a rule, from ATTR or ATTRS."""
    vids = _values(rule, "ATTR", "idVendor") + _values(rule, "ATTRS", "idVendor")
    pids = _values(rule, "ATTR", "idProduct") + _values(rule, "ATTRS", "idProduct")
    alternatives = [alt for value in pids for alt in value.split("|")]
    return (vids[0] if vids else None), alternatives


def _subsystem(rule: dict[str, Any]) -> str | None:
    values = _values(rule, "SUBSYSTEM")
    if values:
        return values[0]
    kernel = _values(rule, "KERNEL")
    return "hidraw" if kernel and kernel[0].startswith("hidraw") else None


def _covers(alternatives: list[str], pid: str) -> bool:
    if pid in alternatives:
        return True
    return "?" not in pid and any(fnmatch.fnmatchcase(pid, alt) for alt in alternatives)


@pytest.fixture(scope="module")
def wallet_rules() -> list[dict[str, Any]]:
    return parse_rules(WALLETS.read_text())


@pytest.fixture(scope="module")
def link_rules() -> list[dict[str, Any]]:
    return parse_rules(LINK.read_text())


# --------------------------------------------------------------------------- rule files


@pytest.mark.parametrize("path", sorted(RULES_DIR.glob("*.rules")), ids=lambda p: p.name)
def test_each_rules_file_parses_strictly(path: Path) -> None:
    assert parse_rules(path.read_text())


def test_only_the_two_expected_rule_files_ship() -> None:
    assert {p.name for p in RULES_DIR.glob("*.rules")} == {WALLETS.name, LINK.name}


def test_every_profiled_usb_id_has_a_rule_for_its_subsystem(
    wallet_rules: list[dict[str, Any]],
) -> None:
    missing = []
    for profile in load_profiles():
        for usb in profile.usb:
            for subsystem in usb.subsystems:
                if not any(
                    _subsystem(rule) == subsystem
                    and _ids(rule)[0] == usb.vid
                    and _covers(_ids(rule)[1], usb.pid)
                    for rule in wallet_rules
                ):
                    missing.append(f"{profile.id}: {usb.vid}:{usb.pid} ({subsystem})")
    assert not missing, "no udev rule for: " + ", ".join(missing)


def test_no_rule_grants_access_to_an_unprofiled_device(
    wallet_rules: list[dict[str, Any]],
) -> None:
    named = {(u.vid, u.pid) for p in load_profiles() for u in p.usb}
    for rule in wallet_rules:
        vid, alternatives = _ids(rule)
        assert vid is not None, f"line {rule['line']} matches no vendor id"
        for pid in alternatives:
            assert (vid, pid) in named, f"line {rule['line']}: {vid}:{pid} is in no profile"


def test_wallet_rules_follow_the_vendor_style(wallet_rules: list[dict[str, Any]]) -> None:
    for rule in wallet_rules:
        assert _values(rule, "TAG", op="+=") == ["uaccess"], rule["text"]
        assert _values(rule, "GROUP", op="=") == ["plugdev"], rule["text"]
        assert _values(rule, "MODE", op="=") == ["0660"], rule["text"]
        assert _subsystem(rule) in {"usb", "hidraw", "tty"}, rule["text"]


def test_serial_link_gets_stable_names(link_rules: list[dict[str, Any]]) -> None:
    flagged = {
        _ids(rule)[0] + ":" + pid
        for rule in link_rules
        if _values(rule, "ENV", "BFT_ANCHOR_LINK", op="=") == ["1"]
        for pid in _ids(rule)[1]
    }
    assert flagged == {f"{v}:{p}" for v, p in LINK_ADAPTERS}
    links = [v for rule in link_rules for v in _values(rule, "SYMLINK", op="+=")]
    assert "bft-anchor-link" in links
    serial_rules = [
        rule
        for rule in link_rules
        if any("$attr{serial}" in v for v in _values(rule, "SYMLINK", op="+="))
    ]
    assert len(serial_rules) == 1
    assert _values(serial_rules[0], "ATTRS", "serial") == ["?*"]
    assert "bft-anchor-link-$attr{serial}" in _values(serial_rules[0], "SYMLINK", op="+=")
    assert any(_values(r, "ENV", "ID_MM_DEVICE_IGNORE", op="=") == ["1"] for r in link_rules)


def test_serial_link_file_explains_pinning_and_id_clashes() -> None:
    text = LINK.read_text()
    assert "PINNING ONE ADAPTER" in text
    assert 'ATTRS{serial}=="' in text  # a worked example an operator can copy
    profiled = {(u.vid, u.pid) for p in load_profiles() for u in p.usb}
    for vid, pid in LINK_ADAPTERS & profiled:
        assert f"{vid}:{pid}" in text, f"clash with a signing device not explained: {vid}:{pid}"


# --------------------------------------------------------------------------- parser


def test_parser_returns_structured_rules() -> None:
    rules = parse_rules(
        "# comment\n\n"
        'SUBSYSTEM=="usb", ATTR{idVendor}=="2c97", \\\n'
        '    MODE="0660", TAG+="uaccess"\n'
        'LABEL="end"\n'
    )
    assert [r["line"] for r in rules] == [3, 5]
    assert rules[0]["tokens"][1] == {"key": "ATTR", "attr": "idVendor", "op": "==", "value": "2c97"}
    assert rules[0]["tokens"][3] == {"key": "TAG", "attr": None, "op": "+=", "value": "uaccess"}


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ('KERNEL=="hidraw*", MODE=0660', "expected KEY"),  # unquoted value
        ('KERNEL=="hidraw*" MODE="0660"', "expected KEY"),  # missing comma
        ('KERNEL=="hidraw*", MODE="0660",', "trailing comma"),
        ('KERNEL=~"hidraw*", MODE="0660"', "expected KEY"),  # not a udev operator
        ('KERNAL=="hidraw*", MODE="0660"', "unknown key 'KERNAL'"),
        ('SUBSYSTEM="usb", MODE="0660"', "can only be matched"),
        ('KERNEL=="hidraw*", GROUP=="plugdev"', "can only be assigned"),
        ('ATTRS=="2c97", MODE="0660"', "needs an {attribute}"),
        ('KERNEL{x}=="hidraw*", MODE="0660"', "takes no {attribute}"),
        ('KERNEL=="hidraw*", MODE="rw-rw----"', "MODE must be octal"),
        ('KERNEL=="hidraw*", ATTRS{idVendor}=="2c97"', "never assigns"),
        ('KERNEL=="hidraw*", GOTO="nowhere"', "no matching LABEL"),
        ('KERNEL=="hidraw*", MODE="0660" \\', "ends inside a continued line"),
    ],
)
def test_parser_rejects_malformed_lines(line: str, complaint: str) -> None:
    with pytest.raises(UdevRuleError, match=complaint):
        parse_rules(line + "\n")


# --------------------------------------------------------------------------- install


@pytest.fixture
def no_udevadm(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"udevadm must not be used here: {args}")

    monkeypatch.setattr(udev.subprocess, "run", refuse)
    monkeypatch.setattr(udev.shutil, "which", refuse)


def test_install_into_a_directory_is_idempotent(tmp_path: Path, no_udevadm: None) -> None:
    dest = tmp_path / "rules.d"
    first = install_rules(dest)
    assert f"created directory {dest}" in first
    for source in (WALLETS, LINK):
        assert (dest / source.name).read_bytes() == source.read_bytes()
        assert (dest / source.name).stat().st_mode & 0o777 == 0o644
        assert f"installed {dest / source.name}" in first
    assert first[-1] == f"skipped reload: {dest} is not a directory udev reads"

    second = install_rules(dest)
    assert second == [
        f"unchanged {dest / WALLETS.name}",
        f"unchanged {dest / LINK.name}",
        f"skipped reload: {dest} is not a directory udev reads",
    ]
    assert sorted(p.name for p in dest.iterdir()) == sorted([WALLETS.name, LINK.name])


def test_install_replaces_a_stale_copy(tmp_path: Path, no_udevadm: None) -> None:
    (tmp_path / WALLETS.name).write_text("# old\n")
    actions = install_rules(tmp_path, reload=False)
    assert f"updated {tmp_path / WALLETS.name}" in actions
    assert actions[-1] == "skipped reload: --no-reload given"
    assert (tmp_path / WALLETS.name).read_bytes() == WALLETS.read_bytes()


def test_a_broken_rules_file_is_never_installed(tmp_path: Path, no_udevadm: None) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "10-good.rules").write_text('KERNEL=="x", MODE="0660"\n')
    (source / "20-bad.rules").write_text('KERNEL=="x", MODE=0660\n')
    dest = tmp_path / "dest"
    with pytest.raises(InstallError, match="20-bad.rules"):
        install_rules(dest, source=source)
    assert not dest.exists()


def system_dir_with_udevadm(
    monkeypatch: pytest.MonkeyPatch, returncode: int = 0, stderr: str = ""
) -> list[list[str]]:
    """install_rules sees a system directory and a udevadm that answers every command
    with `returncode` and `stderr`; the commands it was given, in order."""
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    monkeypatch.setattr(udev, "_is_system_dir", lambda dest: True)
    monkeypatch.setattr(udev.shutil, "which", lambda name: "/usr/bin/udevadm")
    monkeypatch.setattr(udev.subprocess, "run", fake_run)
    return calls


def test_system_dir_reloads_udev_only_when_something_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = system_dir_with_udevadm(monkeypatch)
    actions = install_rules(tmp_path)
    assert calls[0] == ["/usr/bin/udevadm", "control", "--reload-rules"]
    assert calls[1][:2] == ["/usr/bin/udevadm", "trigger"]
    assert actions[-1].startswith("ran /usr/bin/udevadm trigger")

    calls.clear()
    assert install_rules(tmp_path)[-1] == "skipped reload: no rules changed"
    assert calls == []


def test_failed_reload_stops_before_trigger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = system_dir_with_udevadm(monkeypatch, 1, "Failed to send reload request")
    with pytest.raises(InstallError, match="Failed to send reload request") as excinfo:
        install_rules(tmp_path)
    assert len(calls) == 1
    assert any(a.startswith("installed ") for a in excinfo.value.actions)


def test_system_dir_without_udevadm_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(udev, "_is_system_dir", lambda dest: True)
    monkeypatch.setattr(udev.shutil, "which", lambda name: None)
    assert install_rules(tmp_path)[-1].startswith("skipped reload: udevadm not found")


# --------------------------------------------------------------------------- CLI


def test_cli_json(tmp_path: Path, no_udevadm: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", "--dest", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["error"] is None
    assert report["dest"] == str(tmp_path)
    assert f"installed {tmp_path / LINK.name}" in report["actions"]


def test_cli_reports_failure(
    tmp_path: Path, no_udevadm: None, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert main(["install", "--dest", str(not_a_dir), "--no-reload"]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_cli_help_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["install", "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "--dest DIR" in out and "--no-reload" in out and "--json" in out
    with pytest.raises(UsageError, match="required: COMMAND"):
        main([])


def test_cli_reports_permission_denied(
    tmp_path: Path,
    no_udevadm: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def deny(target: Path, data: bytes) -> None:
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(udev, "_write_atomically", deny)
    assert main(["install", "--dest", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert "permission denied" in report["error"] and "needs root" in report["error"]
