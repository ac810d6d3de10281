"""Firmware profiles: every file validates and names its sources; matching and capability
checks give the answers (and reasons) an operator would expect."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.devices.profiles import (
    CHECKMULTISIG_MAX_N,
    ENV_PROFILES_DIR,
    REQUIRED_TOPICS,
    SCRIPT_TYPES,
    FirmwareProfile,
    ProfileError,
    check_capability,
    compare_versions,
    default_profiles_dir,
    load_profile,
    load_profiles,
    match_profile,
    parse_version,
)

REPO = Path(__file__).resolve().parents[1]
PROFILES_DIR = REPO / "firmware-profiles"
LINK_ONLY_IDS = {("0403", "6001"), ("1a86", "7523"), ("067b", "2303")}


@pytest.fixture(scope="module")
def profiles() -> list[FirmwareProfile]:
    return load_profiles(PROFILES_DIR)


def by_id(profiles: list[FirmwareProfile], profile_id: str) -> FirmwareProfile:
    return next(p for p in profiles if p.id == profile_id)


# --------------------------------------------------------------------------- the files


def test_default_dir_is_the_repository_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_PROFILES_DIR, raising=False)
    assert default_profiles_dir() == PROFILES_DIR
    assert [p.id for p in load_profiles()] == [p.id for p in load_profiles(PROFILES_DIR)]


def test_every_requested_family_has_a_profile(profiles: list[FirmwareProfile]) -> None:
    assert {p.hwi_type for p in profiles} == {
        "jade",
        "ledger",
        "trezor",
        "coldcard",
        "bitbox02",
        "keepkey",
    }
    ledger = by_id(profiles, "ledger-bitcoin-app-2")
    assert {"ledger_nano_s_plus", "ledger_nano_x"} <= set(ledger.models)
    assert {"trezor_t", "trezor_safe 3"} <= set(by_id(profiles, "trezor-t-safe3").models)


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_each_profile_validates_and_names_sources(path: Path) -> None:
    profile = load_profile(path)
    assert profile.sources, "a profile without sources is a rumour"
    covered = {topic for source in profile.sources for topic in source.covers}
    assert REQUIRED_TOPICS <= covered
    assert all(source.ref.strip() for source in profile.sources)
    assert set(profile.script_types) == set(SCRIPT_TYPES)
    for support in profile.script_types.values():
        assert support.note.strip(), "every script-type verdict needs its reason"
        if support.supported:
            assert support.max_n is not None and support.max_n >= 1
    assert profile.usb, "every signing device enumerates with some USB id"
    parse_version(profile.min_version)
    if profile.firmware_pattern:
        assert profile.covers_version(profile.min_version)


def test_wsh_limits_never_exceed_consensus(profiles: list[FirmwareProfile]) -> None:
    for profile in profiles:
        n = profile.max_n("wsh-sortedmulti")
        assert n is None or n <= CHECKMULTISIG_MAX_N


def test_the_serial_link_adapter_is_not_a_signing_device(profiles: list[FirmwareProfile]) -> None:
    ids = {(u.vid, u.pid) for p in profiles for u in p.usb}
    assert not ids & LINK_ONLY_IDS


def test_known_facts_are_recorded(profiles: list[FirmwareProfile]) -> None:
    jade = by_id(profiles, "jade")
    assert jade.max_n("wsh-sortedmulti") == 15
    assert jade.max_n("tr-multi_a") is None
    assert jade.registration.method == "register_multisig"
    ledger = by_id(profiles, "ledger-bitcoin-app-2")
    assert ledger.version_checked == "app" and ledger.min_app_version == "2.1.0"
    assert ledger.registration.method == "bip388-wallet-policy"
    assert ledger.max_n("wsh-sortedmulti") == 16
    assert by_id(profiles, "coldcard-mk4").registration.method == "multisig-file"
    assert by_id(profiles, "trezor-t-safe3").registration.method == "none"
    assert by_id(profiles, "keepkey").registration.method == "none"
    assert not by_id(profiles, "bitbox02").op_return.supported


# --------------------------------------------------------------------------- strict loading


def _copy_profiles(tmp_path: Path, *names: str) -> Path:
    for name in names:
        shutil.copy(PROFILES_DIR / name, tmp_path / name)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ('hwi_type = "jade"', 'hwi_type = "jade"\ncolour = "green"', "unknown key 'colour'"),
        ('vid = "10c4"', 'vid = "10C4"', "4 lower-case hex"),
        ('subsystems = ["tty"]', 'subsystems = ["serial"]', "subsystems"),
        ("max_n = 15", "max_n = 21", "outside 1..20"),
        ('min_firmware = "0.1.47"', 'min_firmware = "latest"', "not a version"),
        ('method = "register_multisig"', 'method = "magic"', "is not one of"),
        ('covers = ["max_n"]\n', 'covers = ["gossip"]\n', "covers"),
        ("schema = 1", "schema = 2", "expected 1"),
    ],
)
def test_malformed_profiles_are_rejected(
    tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    directory = _copy_profiles(tmp_path, "jade.toml")
    _edit(directory / "jade.toml", old, new)
    with pytest.raises(ProfileError, match=complaint):
        load_profiles(directory)


def test_a_fact_without_a_source_is_rejected(tmp_path: Path) -> None:
    directory = _copy_profiles(tmp_path, "keepkey.toml")
    _edit(directory / "keepkey.toml", 'covers = ["op_return"]', 'covers = ["paths"]')
    with pytest.raises(ProfileError, match="no source covers 'op_return'"):
        load_profiles(directory)


def test_overlapping_profiles_need_firmware_patterns(tmp_path: Path) -> None:
    directory = _copy_profiles(tmp_path, "coldcard-mk4.toml", "coldcard-q.toml")
    load_profiles(directory)  # separated by their patterns
    _edit(directory / "coldcard-q.toml", "firmware_pattern = '^1\\.\\d+\\.\\d+Q$'\n", "")
    with pytest.raises(ProfileError, match="firmware_pattern to tell them apart"):
        load_profiles(directory)


def test_env_var_selects_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _copy_profiles(tmp_path, "jade.toml")
    monkeypatch.setenv(ENV_PROFILES_DIR, str(directory))
    assert [p.id for p in load_profiles()] == ["jade"]
    assert match_profile("trezor", "trezor_t", "2.6.0") is None  # not in that directory


def test_empty_or_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no firmware profiles"):
        load_profiles(tmp_path)
    with pytest.raises(ProfileError, match="not found"):
        load_profiles(tmp_path / "absent")


def test_broken_toml_is_reported_with_its_file(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('name = "unterminated\n')
    with pytest.raises(ProfileError, match="bad.toml: not valid TOML"):
        load_profiles(tmp_path)


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0.29", "1.0.3", 1),
        ("1.0.3", "1.0.29", -1),
        ("0.1.47", "0.1.47", 0),
        ("2.1", "2.1.0", 0),
        ("v9.24.0", "9.24.0", 0),
        ("10.0.0", "9.99.99", 1),
        ("2.1.0-rc1", "2.1.0", -1),
        ("2.1.0rc2", "2.1.0rc10", -1),
        ("2.1.0-beta.2", "2.1.0-beta.11", -1),
        ("2.1.0-alpha", "2.1.0-beta", -1),
        ("1.3.0Q", "1.3.0", 0),  # Coldcard model marker, not a pre-release
        ("1.3.0Q", "1.2.9Q", 1),
        ("6.3.3QX", "6.3.4QX", -1),
        ("2.4.3", "2.4.3+build.7", 0),
    ],
)
def test_versions_compare_numerically(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_equal_versions_hash_alike() -> None:
    assert parse_version("2.1") == parse_version("2.1.0")
    assert hash(parse_version("2.1")) == hash(parse_version("2.1.0"))


@pytest.mark.parametrize("text", ["", "abc", "1..2", "1.2.3-", ".1.2", "1.2.3 beta", "2.x"])
def test_garbage_versions_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version(text)


# --------------------------------------------------------------------------- matching


def test_match_by_type_and_model(profiles: list[FirmwareProfile]) -> None:
    assert match_profile("jade", "jade", "1.0.29", profiles=profiles).id == "jade"
    assert match_profile("JADE", "jade_simulator", None, profiles=profiles).id == "jade"
    safe3 = match_profile("trezor", "trezor_safe 3", "2.8.1", profiles=profiles)
    assert safe3 is not None and safe3.id == "trezor-t-safe3"
    assert match_profile("keepkey", None, None, profiles=profiles).id == "keepkey"
    assert match_profile("trezor", "trezor_1", "1.12.1", profiles=profiles) is None
    assert match_profile("digitalbitbox", None, None, profiles=profiles) is None


def test_firmware_selects_the_range(profiles: list[FirmwareProfile]) -> None:
    mk4 = match_profile("coldcard", "coldcard", "5.4.1", profiles=profiles)
    q = match_profile("coldcard", "coldcard", "1.3.0Q", profiles=profiles)
    assert (mk4.id, q.id) == ("coldcard-mk4", "coldcard-q")
    # Mk4 vs Q cannot be told apart without a version; no guessing.
    assert match_profile("coldcard", "coldcard", None, profiles=profiles) is None
    # EDGE firmware is experimental and deliberately unprofiled.
    assert match_profile("coldcard", "coldcard_edge", "6.3.3X", profiles=profiles) is None
    assert match_profile("ledger", "ledger_nano_x", "2.2.3", profiles=profiles).id == (
        "ledger-bitcoin-app-2"
    )
    assert match_profile("ledger", "ledger_nano_x", "1.6.5", profiles=profiles) is None


# --------------------------------------------------------------------------- capability


def test_a_capable_device_gets_no_reasons(profiles: list[FirmwareProfile]) -> None:
    jade = by_id(profiles, "jade")
    assert check_capability(jade, "wsh-sortedmulti", 7, "1.0.29") == []
    assert check_capability(jade, "wsh-sortedmulti", 15, "0.1.47") == []
    ledger = by_id(profiles, "ledger-bitcoin-app-2")
    assert check_capability(ledger, "wsh-sortedmulti", 16, "2.2.3", foreign_inputs=True) == []
    assert check_capability(by_id(profiles, "coldcard-q"), "wsh-sortedmulti", 10, "1.3.0Q") == []


def test_too_many_keys(profiles: list[FirmwareProfile]) -> None:
    reasons = check_capability(by_id(profiles, "jade"), "wsh-sortedmulti", 20, "1.0.29")
    assert len(reasons) == 1
    assert "n=20" in reasons[0] and "15" in reasons[0]


def test_consensus_limit_applies_to_every_device(profiles: list[FirmwareProfile]) -> None:
    ledger = by_id(profiles, "ledger-bitcoin-app-2")
    reasons = check_capability(ledger, "wsh-sortedmulti", 21, "2.2.3")
    assert any("consensus limit of 20" in r for r in reasons)
    assert any("16 keys" in r for r in reasons)


def test_missing_script_type(profiles: list[FirmwareProfile]) -> None:
    reasons = check_capability(by_id(profiles, "jade"), "tr-multi_a", 5, "1.0.29")
    assert len(reasons) == 1
    assert "cannot sign tr-multi_a" in reasons[0]
    assert "firmware-profiles/jade.toml" in reasons[0]


def test_unknown_script_type_and_bad_n(profiles: list[FirmwareProfile]) -> None:
    reasons = check_capability(by_id(profiles, "jade"), "sh-multi", 0, "1.0.29")
    assert any("unknown script type 'sh-multi'" in r for r in reasons)
    assert any("n=0" in r for r in reasons)


def test_firmware_too_old_unknown_or_unreadable(profiles: list[FirmwareProfile]) -> None:
    jade = by_id(profiles, "jade")
    old = check_capability(jade, "wsh-sortedmulti", 3, "0.1.46")
    assert old == ["firmware 0.1.46 is too old: Blockstream Jade needs firmware 0.1.47 or later"]
    # The classic string-comparison trap: "1.0.3" < "1.0.29" as versions, but not as text.
    assert check_capability(jade, "wsh-sortedmulti", 3, "1.0.3") == []
    assert "version unknown" in check_capability(jade, "wsh-sortedmulti", 3, None)[0]
    assert "cannot read firmware version" in check_capability(jade, "wsh-sortedmulti", 3, "dev")[0]
    ledger = by_id(profiles, "ledger-bitcoin-app-2")
    reasons = check_capability(ledger, "wsh-sortedmulti", 3, "2.0.6")
    assert reasons == [
        "Bitcoin app 2.0.6 is too old: Ledger Nano S Plus / Nano X (Bitcoin app 2.x) needs "
        "Bitcoin app 2.1.0 or later"
    ]
    beyond = check_capability(ledger, "wsh-sortedmulti", 3, "3.0.0")
    assert any("outside the range" in r for r in beyond)
    mk4 = by_id(profiles, "coldcard-mk4")
    assert any("too old" in r for r in check_capability(mk4, "wsh-sortedmulti", 3, "5.0.4"))


def test_op_return_is_always_required(profiles: list[FirmwareProfile]) -> None:
    bitbox = by_id(profiles, "bitbox02")
    reasons = check_capability(bitbox, "wsh-sortedmulti", 5, "9.24.0")
    assert len(reasons) == 1 and "OP_RETURN" in reasons[0]


def test_account_range_and_foreign_inputs(profiles: list[FirmwareProfile]) -> None:
    trezor = by_id(profiles, "trezor-t-safe3")
    assert check_capability(trezor, "wsh-sortedmulti", 5, "2.8.1", account=100) == []
    beyond = check_capability(trezor, "wsh-sortedmulti", 5, "2.8.1", account=101)
    assert len(beyond) == 1 and "0..100" in beyond[0]
    assert check_capability(trezor, "wsh-sortedmulti", 5, "2.4.3", foreign_inputs=True) == []
    later = check_capability(trezor, "wsh-sortedmulti", 5, "2.4.4", foreign_inputs=True)
    assert len(later) == 1 and "2.4.3" in later[0]
    bitbox = by_id(profiles, "bitbox02")
    assert any(
        "inputs it does not own" in r
        for r in check_capability(bitbox, "wsh-sortedmulti", 5, "9.24.0", foreign_inputs=True)
    )
