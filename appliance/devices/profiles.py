"""Firmware profiles: what each signing device can do when driven through HWI 3.2.

The facts live in ``firmware-profiles/*.toml`` (one file per device family and firmware
range, each naming its sources); this module loads them strictly, finds the profile for a
connected device and turns a profile into human-readable reasons why a device cannot sign a
given checkpoint.  Loading is strict (unknown keys, missing sources and malformed ids are
errors) because a typo in a profile would otherwise silently widen what the appliance asks a
device to do.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import total_ordering
from pathlib import Path
from typing import Any

ENV_PROFILES_DIR = "BFT_ANCHOR_PROFILES"
SCHEMA_VERSION = 1

WSH_SORTEDMULTI = "wsh-sortedmulti"
TR_MULTI_A = "tr-multi_a"
SCRIPT_TYPES: tuple[str, ...] = (WSH_SORTEDMULTI, TR_MULTI_A)

# The names epoch records use (DESIGN.md "script") for the profiles' script types.
RECORD_SCRIPTS = {"wsh-sortedmulti": WSH_SORTEDMULTI, "tr-sortedmulti_a": TR_MULTI_A}

# Consensus: OP_CHECKMULTISIG takes at most 20 keys; a bigger wsh(sortedmulti) coin is
# unspendable forever (DESIGN.md, "Multisig scripts").
CHECKMULTISIG_MAX_N = 20
# BIP342 / Bitcoin Core MAX_PUBKEYS_PER_MULTI_A.
MULTI_A_MAX_N = 999

REGISTRATION_METHODS = frozenset(
    {"register_multisig", "bip388-wallet-policy", "multisig-file", "bitbox02-script-config", "none"}
)
VERSION_CHECKED = frozenset({"firmware", "app"})
USB_SUBSYSTEMS = frozenset({"hidraw", "usb", "tty"})
SOURCE_TOPICS = frozenset(
    {
        "usb",
        "models",
        "min_version",
        "script_types",
        "max_n",
        "registration",
        "op_return",
        "foreign_inputs",
        "paths",
    }
)
REQUIRED_TOPICS = frozenset(
    {"usb", "min_version", "script_types", "max_n", "registration", "op_return"}
)

_HEX4 = re.compile(r"^[0-9a-f]{4}$")
_PID = re.compile(r"^[0-9a-f?]{4}$")


class ProfileError(ValueError):
    """A profile file (or the set of them) is malformed; the message lists every problem."""


# --------------------------------------------------------------------------- versions

_VERSION_RE = re.compile(
    r"^[vV]?(?P<release>\d+(?:\.\d+)*)"
    r"(?P<tag>[A-Za-z]+\d*)?"
    r"(?:[-~](?P<pre>[0-9A-Za-z]+(?:[.-][0-9A-Za-z]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z.-]+))?$"
)
# Letter tags that mean "before the release" when glued on ("2.1.0rc1"); other tags, such as
# Coldcard's "Q" and "X" (model and EDGE markers), name a variant and do not affect ordering.
_PRERELEASE_TAG = re.compile(r"^(?:a|b|c|rc|alpha|beta|pre|preview|dev)\d*$", re.IGNORECASE)


@total_ordering
@dataclass(frozen=True)
class Version:
    """A parsed firmware or app version, compared numerically part by part.

    Numeric comparison is the point: as strings "1.0.29" > "1.0.3", as versions it is less.
    Missing trailing parts count as zero ("2.1" == "2.1.0"); a pre-release sorts before its
    release ("2.1.0-rc1" < "2.1.0"), as in semver.
    """

    release: tuple[int, ...]
    prerelease: tuple[str, ...] = ()
    variant: str = ""
    text: str = ""

    def _compare(self, other: Version) -> int:
        width = max(len(self.release), len(other.release))
        mine = self.release + (0,) * (width - len(self.release))
        theirs = other.release + (0,) * (width - len(other.release))
        if mine != theirs:
            return -1 if mine < theirs else 1
        return _compare_prerelease(self.prerelease, other.prerelease)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._compare(other) == 0

    def __lt__(self, other: Version) -> bool:
        return self._compare(other) < 0

    def __hash__(self) -> int:
        release = list(self.release)
        while release and release[-1] == 0:
            release.pop()
        return hash((tuple(release), self.prerelease))

    def __str__(self) -> str:
        return self.text or ".".join(map(str, self.release))


def _compare_prerelease(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    if a == b:
        return 0
    if not a:
        return 1  # a release is newer than any of its pre-releases
    if not b:
        return -1
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1  # numeric identifiers sort first
        return -1 if x < y else 1
    return -1 if len(a) < len(b) else 1


def parse_version(text: str) -> Version:
    """Parse "1.0.29", "v9.24.0", "1.3.0Q", "6.3.3QX", "2.1.0-rc1"; raise ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"version must be a string, not {type(text).__name__}")
    cleaned = text.strip()
    match = _VERSION_RE.match(cleaned)
    if not match:
        raise ValueError(f"not a version: {text!r}")
    release = tuple(int(part) for part in match["release"].split("."))
    prerelease: list[str] = []
    variant = ""
    tag = match["tag"] or ""
    if tag:
        if _PRERELEASE_TAG.match(tag):
            prerelease.extend(_split_identifiers(tag))
        else:
            variant = tag
    if match["pre"]:
        prerelease.extend(re.split(r"[.-]", match["pre"]))
    return Version(release, tuple(prerelease), variant, cleaned)


def _split_identifiers(tag: str) -> list[str]:
    """Split a glued tag such as "rc1" into ["rc", "1"], so that rc2 < rc10."""
    head = re.match(r"^([A-Za-z]+)(\d*)$", tag)
    assert head is not None
    return [head[1].lower()] + ([head[2]] if head[2] else [])


def compare_versions(a: str, b: str) -> int:
    """Return -1, 0 or 1 as version ``a`` is older than, equal to or newer than ``b``."""
    return parse_version(a)._compare(parse_version(b))


# --------------------------------------------------------------------------- profile model


@dataclass(frozen=True)
class ScriptSupport:
    """Whether a script type can be signed end to end through HWI, and up to which n."""

    supported: bool
    max_n: int | None
    min_version: str | None
    note: str


@dataclass(frozen=True)
class Registration:
    """How the device learns the multisig before it will sign for it."""

    method: str
    note: str


@dataclass(frozen=True)
class OpReturnSupport:
    """Whether a transaction with an OP_RETURN output reaches the device, and how it shows it."""

    supported: bool
    min_version: str | None
    display: str
    note: str


@dataclass(frozen=True)
class ForeignInputs:
    """Whether the device signs when other inputs (fee top-ups) it does not own are present."""

    supported: bool
    max_version: str | None
    note: str


@dataclass(frozen=True)
class PathLimits:
    """Derivation-path limits; bft-anchor puts the epoch at the BIP48 account level."""

    max_bip48_account: int | None
    note: str


@dataclass(frozen=True)
class UsbId:
    """A USB vendor/product id pair the device enumerates with (pid may hold udev '?')."""

    vid: str
    pid: str
    subsystems: tuple[str, ...]
    note: str


@dataclass(frozen=True)
class Source:
    """Where facts came from; ``covers`` names which facts."""

    covers: tuple[str, ...]
    ref: str
    note: str


@dataclass(frozen=True)
class FirmwareProfile:
    """One device family and firmware range, as loaded from firmware-profiles/<id>.toml."""

    id: str
    path: Path
    name: str
    hwi_type: str
    models: tuple[str, ...]
    vendor_models: tuple[str, ...]
    version_checked: str
    min_firmware: str | None
    min_app_version: str | None
    firmware_pattern: str | None
    firmware_note: str
    uncertain: tuple[str, ...]
    script_types: Mapping[str, ScriptSupport] = field(hash=False)
    registration: Registration = field(default=Registration("none", ""))
    op_return: OpReturnSupport = field(default=OpReturnSupport(False, None, "", ""))
    foreign_inputs: ForeignInputs = field(default=ForeignInputs(False, None, ""))
    paths: PathLimits = field(default=PathLimits(None, ""))
    usb: tuple[UsbId, ...] = ()
    sources: tuple[Source, ...] = ()

    @property
    def min_version(self) -> str:
        """The minimum that the version string given to match/check is compared with."""
        value = self.min_app_version if self.version_checked == "app" else self.min_firmware
        assert value is not None  # guaranteed by validation
        return value

    @property
    def version_label(self) -> str:
        """What the compared version is, in words: 'firmware' or 'Bitcoin app'."""
        return "Bitcoin app" if self.version_checked == "app" else "firmware"

    def covers_version(self, version: str) -> bool:
        """Whether ``version`` falls in this profile's firmware range (its pattern)."""
        if self.firmware_pattern is None:
            return True
        return re.search(self.firmware_pattern, version.strip()) is not None

    def max_n(self, script_type: str) -> int | None:
        """Largest n signable for ``script_type``, or None when the type is unsupported."""
        support = self.script_types.get(RECORD_SCRIPTS.get(script_type, script_type))
        if support is None or not support.supported:
            return None
        return support.max_n


# --------------------------------------------------------------------------- strict reading


class _Table:
    """Typed, strict access to one TOML table; problems are collected, not raised."""

    def __init__(self, data: Any, where: str, errors: list[str]) -> None:
        self.where = where
        self.errors = errors
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        if not isinstance(data, dict):
            errors.append(f"{where}: expected a table")
        self.seen: set[str] = set()

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if required:
                self.errors.append(f"{self.where}: missing '{key}'")
            return None
        return self.data[key]

    def text(self, key: str, required: bool = True, nonempty: bool = True) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str) or (nonempty and not value.strip()):
            self.errors.append(f"{self.where}.{key}: expected a non-empty string")
            return None
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key, True)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.errors.append(f"{self.where}.{key}: expected true or false")
            return False
        return value

    def integer(self, key: str, required: bool = True) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.errors.append(f"{self.where}.{key}: expected an integer")
            return None
        return value

    def texts(self, key: str, required: bool = True) -> tuple[str, ...]:
        value = self._get(key, required)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.errors.append(f"{self.where}.{key}: expected a list of non-empty strings")
            return ()
        return tuple(value)

    def table(self, key: str, required: bool = True) -> _Table:
        value = self._get(key, required)
        return _Table(value if value is not None else {}, f"{self.where}.{key}", self.errors)

    def tables(self, key: str) -> list[_Table]:
        value = self._get(key, True)
        if value is None:
            return []
        if not isinstance(value, list) or not value:
            self.errors.append(f"{self.where}.{key}: expected one or more [[{key}]] tables")
            return []
        return [_Table(v, f"{self.where}.{key}[{i}]", self.errors) for i, v in enumerate(value)]

    def version(self, key: str, required: bool = True) -> str | None:
        value = self.text(key, required)
        if value is not None:
            try:
                parse_version(value)
            except ValueError:
                self.errors.append(f"{self.where}.{key}: not a version: {value!r}")
                return None
        return value

    def done(self) -> None:
        """Reject keys nobody asked for: they are typos or facts the loader would ignore."""
        for key in sorted(set(self.data) - self.seen):
            self.errors.append(f"{self.where}: unknown key '{key}'")


def _parse_profile(path: Path, data: dict[str, Any]) -> FirmwareProfile:
    errors: list[str] = []
    top = _Table(data, path.name, errors)

    schema = top.integer("schema")
    if schema is not None and schema != SCHEMA_VERSION:
        errors.append(f"{path.name}.schema: expected {SCHEMA_VERSION}, got {schema}")
    name = top.text("name") or path.stem
    hwi_type = top.text("hwi_type") or ""
    if hwi_type and hwi_type != hwi_type.lower():
        errors.append(f"{path.name}.hwi_type: must be lower case as HWI reports it")
    models = top.texts("models")
    if not models:
        errors.append(f"{path.name}.models: at least one HWI model string is required")
    vendor_models = top.texts("vendor_models")
    version_checked = top.text("version_checked") or "firmware"
    if version_checked not in VERSION_CHECKED:
        errors.append(f"{path.name}.version_checked: expected one of {sorted(VERSION_CHECKED)}")
    min_firmware = top.version("min_firmware", required=version_checked == "firmware")
    min_app_version = top.version("min_app_version", required=version_checked == "app")
    firmware_pattern = top.text("firmware_pattern", required=False)
    if firmware_pattern is not None:
        try:
            re.compile(firmware_pattern)
        except re.error as exc:
            errors.append(f"{path.name}.firmware_pattern: bad regex: {exc}")
            firmware_pattern = None
    minimum = min_app_version if version_checked == "app" else min_firmware
    if firmware_pattern is not None and minimum is not None:
        if not re.search(firmware_pattern, minimum):
            errors.append(f"{path.name}: minimum {minimum} does not match firmware_pattern")
    firmware_note = top.text("firmware_note") or ""
    uncertain = top.texts("uncertain", required=False)

    script_types = _parse_script_types(top.table("script_types"), errors)
    registration = _parse_registration(top.table("registration"), errors)
    op_return = _parse_op_return(top.table("op_return"), errors)
    foreign_inputs = _parse_foreign_inputs(top.table("foreign_inputs"), errors)
    paths = _parse_paths(top.table("paths", required=False), errors)
    usb = tuple(_parse_usb(t) for t in top.tables("usb"))
    sources = tuple(_parse_source(t) for t in top.tables("sources"))
    top.done()

    seen_ids: set[tuple[str, str]] = set()
    for entry in usb:
        if (entry.vid, entry.pid) in seen_ids:
            errors.append(f"{path.name}.usb: {entry.vid}:{entry.pid} listed twice")
        seen_ids.add((entry.vid, entry.pid))
    covered = {topic for source in sources for topic in source.covers}
    for topic in sorted(REQUIRED_TOPICS - covered):
        errors.append(f"{path.name}.sources: no source covers '{topic}'")

    if errors:
        raise ProfileError(f"{path}: invalid firmware profile:\n  " + "\n  ".join(errors))
    return FirmwareProfile(
        id=path.stem,
        path=path,
        name=name,
        hwi_type=hwi_type,
        models=models,
        vendor_models=vendor_models,
        version_checked=version_checked,
        min_firmware=min_firmware,
        min_app_version=min_app_version,
        firmware_pattern=firmware_pattern,
        firmware_note=firmware_note,
        uncertain=uncertain,
        script_types=script_types,
        registration=registration,
        op_return=op_return,
        foreign_inputs=foreign_inputs,
        paths=paths,
        usb=usb,
        sources=sources,
    )


def _parse_script_types(table: _Table, errors: list[str]) -> dict[str, ScriptSupport]:
    result: dict[str, ScriptSupport] = {}
    limits = {WSH_SORTEDMULTI: CHECKMULTISIG_MAX_N, TR_MULTI_A: MULTI_A_MAX_N}
    for script_type in SCRIPT_TYPES:
        entry = table.table(script_type)
        supported = entry.flag("supported")
        max_n = entry.integer("max_n", required=supported)
        if max_n is not None and not 1 <= max_n <= limits[script_type]:
            errors.append(
                f"{entry.where}.max_n: {max_n} is outside 1..{limits[script_type]} "
                f"(the {script_type} consensus limit)"
            )
        min_version = entry.version("min_version", required=False)
        note = entry.text("note") or ""
        entry.done()
        result[script_type] = ScriptSupport(supported, max_n, min_version, note)
    table.done()
    return result


def _parse_registration(table: _Table, errors: list[str]) -> Registration:
    method = table.text("method") or "none"
    if method not in REGISTRATION_METHODS:
        errors.append(
            f"{table.where}.method: {method!r} is not one of {sorted(REGISTRATION_METHODS)}"
        )
    note = table.text("note") or ""
    table.done()
    return Registration(method, note)


def _parse_op_return(table: _Table, errors: list[str]) -> OpReturnSupport:
    supported = table.flag("supported")
    min_version = table.version("min_version", required=False)
    display = table.text("display") or ""
    note = table.text("note", required=False) or ""
    table.done()
    return OpReturnSupport(supported, min_version, display, note)


def _parse_foreign_inputs(table: _Table, errors: list[str]) -> ForeignInputs:
    supported = table.flag("supported")
    max_version = table.version("max_version", required=False)
    if max_version is not None and not supported:
        errors.append(f"{table.where}.max_version: only meaningful when supported = true")
    note = table.text("note") or ""
    table.done()
    return ForeignInputs(supported, max_version, note)


def _parse_paths(table: _Table, errors: list[str]) -> PathLimits:
    max_account = table.integer("max_bip48_account", required=False)
    if max_account is not None and max_account < 0:
        errors.append(f"{table.where}.max_bip48_account: must not be negative")
    note = table.text("note", required=False) or ""
    table.done()
    return PathLimits(max_account, note)


def _parse_usb(table: _Table) -> UsbId:
    vid = table.text("vid") or ""
    pid = table.text("pid") or ""
    if vid and not _HEX4.match(vid):
        table.errors.append(f"{table.where}.vid: expected 4 lower-case hex digits, got {vid!r}")
    if pid and not _PID.match(pid):
        table.errors.append(
            f"{table.where}.pid: expected 4 lower-case hex digits or '?', got {pid!r}"
        )
    subsystems = table.texts("subsystems")
    bad = sorted(set(subsystems) - USB_SUBSYSTEMS)
    if bad or not subsystems:
        table.errors.append(
            f"{table.where}.subsystems: expected some of {sorted(USB_SUBSYSTEMS)}, "
            f"got {bad or '[]'}"
        )
    note = table.text("note", required=False) or ""
    table.done()
    return UsbId(vid, pid, subsystems, note)


def _parse_source(table: _Table) -> Source:
    covers = table.texts("covers")
    bad = sorted(set(covers) - SOURCE_TOPICS)
    if bad or not covers:
        table.errors.append(
            f"{table.where}.covers: expected some of {sorted(SOURCE_TOPICS)}, got {bad or '[]'}"
        )
    ref = table.text("ref") or ""
    note = table.text("note", required=False) or ""
    table.done()
    return Source(covers, ref, note)


# --------------------------------------------------------------------------- loading


def default_profiles_dir() -> Path:
    """$BFT_ANCHOR_PROFILES if set, else the repository's firmware-profiles/ next to the package."""
    override = os.environ.get(ENV_PROFILES_DIR)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / "firmware-profiles"


def load_profile(path: Path | str) -> FirmwareProfile:
    """Load and validate one profile file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    return _parse_profile(path, data)


def load_profiles(dir: Path | str | None = None) -> list[FirmwareProfile]:
    """Load every ``*.toml`` in ``dir`` (default: see default_profiles_dir), sorted by id.

    Raises ProfileError listing every problem found, across all files, so that one run shows
    the whole damage instead of the first typo.
    """
    directory = Path(dir).expanduser() if dir is not None else default_profiles_dir()
    if not directory.is_dir():
        raise ProfileError(f"firmware profile directory not found: {directory}")
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ProfileError(f"no firmware profiles (*.toml) in {directory}")
    profiles: list[FirmwareProfile] = []
    problems: list[str] = []
    for path in files:
        try:
            profiles.append(load_profile(path))
        except ProfileError as exc:
            problems.append(str(exc))
    problems.extend(_overlaps(profiles))
    if problems:
        raise ProfileError("\n".join(problems))
    return profiles


def _overlaps(profiles: Sequence[FirmwareProfile]) -> list[str]:
    """Two profiles may share an HWI (type, model) only when firmware patterns separate them."""
    problems: list[str] = []
    by_key: dict[tuple[str, str], list[FirmwareProfile]] = {}
    for profile in profiles:
        for model in profile.models:
            by_key.setdefault((profile.hwi_type, model), []).append(profile)
    for (hwi_type, model), group in sorted(by_key.items()):
        if len(group) > 1 and any(p.firmware_pattern is None for p in group):
            ids = ", ".join(p.id for p in group)
            problems.append(
                f"profiles {ids} all claim {hwi_type}/{model}; "
                "each needs a firmware_pattern to tell them apart"
            )
    return problems


# --------------------------------------------------------------------------- matching


def _normalise_model(model: str | None) -> str | None:
    if model is None:
        return None
    cleaned = model.strip().lower()
    return cleaned.removesuffix("_simulator") or None


def match_profile(
    device_type: str,
    model: str | None,
    firmware: str | None,
    *,
    profiles: Iterable[FirmwareProfile] | None = None,
) -> FirmwareProfile | None:
    """The profile for a device as HWI enumerates it, or None if none (or several) apply.

    ``device_type`` and ``model`` are HWI's ``type`` and ``model`` ("_simulator" is ignored);
    ``firmware`` is the device firmware, or the Bitcoin app version for Ledger.  It only
    selects the firmware range here (Coldcard Mk4 "5.x.y" vs Q "1.x.yQ", Ledger app 2.x);
    whether it is new enough is check_capability's job.  Without ``firmware`` a family split
    by range is ambiguous and None is returned rather than a guess.
    """
    pool = list(profiles) if profiles is not None else load_profiles()
    wanted_type = device_type.strip().lower()
    wanted_model = _normalise_model(model)
    candidates = [
        p
        for p in pool
        if p.hwi_type == wanted_type and (wanted_model is None or wanted_model in p.models)
    ]
    if firmware is not None:
        candidates = [p for p in candidates if p.covers_version(firmware)]
    if len(candidates) != 1:
        return None
    return candidates[0]


# --------------------------------------------------------------------------- capability


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.match(r"^(.+?[.;])(\s|$)", flat)
    return (match[1] if match else flat).rstrip(".;")


def check_capability(
    profile: FirmwareProfile,
    script_type: str,
    n: int,
    firmware: str | None,
    *,
    account: int | None = None,
    foreign_inputs: bool = False,
) -> list[str]:
    """Reasons, for a person, why this device cannot sign the checkpoint; [] means it can.

    ``script_type`` is "wsh-sortedmulti" or "tr-multi_a", ``n`` the number of keys in the
    multisig, ``firmware`` as for match_profile (None counts as a reason: an unknown version
    cannot be shown to be new enough).  ``account`` is the BIP48 account (the epoch) and
    ``foreign_inputs`` whether the PSBT has inputs the device does not own (fee top-ups).
    Every checkpoint has an OP_RETURN output, so OP_RETURN support is always checked.
    """
    reasons: list[str] = []
    name = profile.name
    where = f"firmware-profiles/{profile.path.name}"
    script_type = RECORD_SCRIPTS.get(script_type, script_type)

    support = profile.script_types.get(script_type)
    if support is None:
        reasons.append(
            f"unknown script type {script_type!r}; expected one of {', '.join(SCRIPT_TYPES)}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        reasons.append(f"n={n!r} is not a valid number of multisig keys (must be 1 or more)")
    elif script_type == WSH_SORTEDMULTI and n > CHECKMULTISIG_MAX_N:
        reasons.append(
            f"n={n} exceeds the consensus limit of {CHECKMULTISIG_MAX_N} keys for "
            "CHECKMULTISIG; such a coin could never be spent"
        )
    elif script_type == TR_MULTI_A and n > MULTI_A_MAX_N:
        reasons.append(
            f"n={n} exceeds the {MULTI_A_MAX_N} keys a multi_a leaf can hold (the consensus "
            "stack limit of 1000 items)"
        )
    if support is not None:
        if not support.supported:
            reasons.append(
                f"{name} cannot sign {script_type} through HWI 3.2: "
                f"{_first_sentence(support.note)} (see {where})"
            )
        elif (
            support.max_n is not None
            and isinstance(n, int)
            and not isinstance(n, bool)
            and n > support.max_n
        ):
            reasons.append(
                f"n={n} exceeds the largest {script_type} multisig {name} will sign "
                f"({support.max_n} keys)"
            )

    if not profile.op_return.supported:
        why = profile.op_return.note or profile.op_return.display
        reasons.append(
            f"{name} cannot sign a transaction with an OP_RETURN output through HWI 3.2: "
            f"{_first_sentence(why)} (see {where})"
        )
    if foreign_inputs and not profile.foreign_inputs.supported:
        reasons.append(
            f"{name} cannot sign while the transaction has inputs it does not own (fee "
            f"top-ups): {_first_sentence(profile.foreign_inputs.note)}"
        )
    limit = profile.paths.max_bip48_account
    if account is not None:
        if isinstance(account, bool) or not isinstance(account, int) or account < 0:
            reasons.append(f"account {account!r} is not a valid BIP48 account index")
        elif limit is not None and account > limit:
            reasons.append(
                f"epoch/account {account} is beyond the BIP48 account range {name} accepts "
                f"(0..{limit}): {_first_sentence(profile.paths.note)}"
            )

    reasons.extend(_firmware_reasons(profile, support, firmware, foreign_inputs, script_type))
    return list(dict.fromkeys(reasons))


def _firmware_reasons(
    profile: FirmwareProfile,
    support: ScriptSupport | None,
    firmware: str | None,
    foreign_inputs: bool,
    script_type: str,
) -> list[str]:
    name = profile.name
    label = profile.version_label
    minimum = profile.min_version
    if firmware is None or not str(firmware).strip():
        return [f"{label} version unknown; {name} needs {label} {minimum} or later"]
    try:
        version = parse_version(firmware)
    except ValueError:
        return [f"cannot read {label} version {firmware!r} of the {name}"]
    reasons: list[str] = []
    if not profile.covers_version(firmware):
        reasons.append(
            f"{label} {firmware} is outside the range this profile covers "
            f"({profile.firmware_pattern!r} in firmware-profiles/{profile.path.name})"
        )
    if version < parse_version(minimum):
        reasons.append(f"{label} {firmware} is too old: {name} needs {label} {minimum} or later")
    if support is not None and support.supported and support.min_version:
        if version < parse_version(support.min_version):
            reasons.append(
                f"{script_type} on the {name} needs {label} {support.min_version} or later "
                f"(have {firmware})"
            )
    op_return = profile.op_return
    if op_return.supported and op_return.min_version:
        if version < parse_version(op_return.min_version):
            reasons.append(
                f"OP_RETURN outputs on the {name} need {label} {op_return.min_version} or "
                f"later (have {firmware})"
            )
    extra = profile.foreign_inputs
    if foreign_inputs and extra.supported and extra.max_version:
        if version > parse_version(extra.max_version):
            reasons.append(
                f"{name} {label} {firmware} refuses transactions with inputs it does not own "
                f"(fee top-ups); only up to {extra.max_version} allowed them"
            )
    return reasons


def tapscript_reasons(device_type: str, n: int, label: str | None = None) -> list[str]:
    """Why a device of this HWI type cannot sign a tapscript epoch of n keys ([]: it can).

    Asked when a record is made or installed and when the multisig is registered, so a
    validator learns it before the epoch starts, not when a checkpoint needs signing.
    """
    who = label or device_type
    family = [p for p in load_profiles() if p.hwi_type == device_type.strip().lower()]
    if not family:
        return [
            f"this device cannot sign this epoch: no firmware profile for {who} says it "
            "signs tr(NUMS, sortedmulti_a) through HWI"
        ]
    why = []
    for p in family:
        support = p.script_types.get(TR_MULTI_A)
        if support is None or not support.supported:
            note = _first_sentence(support.note) if support else "not profiled"
            why.append(f"{p.name}: {note} (see firmware-profiles/{p.path.name})")
        elif support.max_n is not None and n > support.max_n:
            why.append(f"{p.name} signs tapscript multisigs of at most {support.max_n} keys")
        else:
            return []
    return [f"this device ({who}) cannot sign this epoch (tr-sortedmulti_a, {n} keys): "
            + "; ".join(why)]
