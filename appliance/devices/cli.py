"""`bft-anchor device`: which signing devices are connected, and can they sign an epoch.

Devices are found through HWI's own enumerate; what each can do comes from the
firmware profiles, so an operator learns *before* a handover that a device cannot
sign the next epoch's multisig, and why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from appliance.devices.capability import cannot_sign
from appliance.devices.profiles import (
    RECORD_SCRIPTS,
    check_capability,
    load_profiles,
    match_profile,
    parse_version,
)
from bftanchor.usage import ArgumentParser, InputError, read_text


def _firmware_of(device: dict[str, Any], chain: Any) -> str | None:
    """HWI's enumerate does not report firmware; ask the device where HWI can."""
    from hwilib import commands

    try:
        client = commands.get_client(device["type"], device["path"], chain=chain)
    except Exception:
        return None
    try:
        version = getattr(client, "fw_version", None)
        return str(version) if version is not None else None
    finally:
        try:
            client.close()
        except Exception:
            pass


def list_devices(allow_emulators: bool, testnet: bool = True) -> list[dict[str, Any]]:
    from hwilib import commands
    from hwilib.common import Chain

    chain = Chain.TEST if testnet else Chain.MAIN
    profiles = load_profiles()
    out = []
    for d in commands.enumerate(chain=chain, allow_emulators=allow_emulators):
        firmware = d.get("firmware") or _firmware_of(d, chain)
        profile = match_profile(d.get("type", ""), d.get("model"), firmware, profiles=profiles)
        out.append(
            {
                "type": d.get("type"),
                "model": d.get("model"),
                "path": d.get("path"),
                "fingerprint": d.get("fingerprint"),
                "firmware": firmware,
                "profile": profile.id if profile else None,
                "error": d.get("error"),
            }
        )
    return out


def load_epoch(epoch_file: Path):
    """The epoch record in a file, or an InputError naming the file (exit 2, not "cannot sign")."""
    from bftanchor.descriptor import EpochMultisig
    from bftanchor.epoch import EpochRecord
    from bftanchor.errors import CheckpointError

    text = read_text(epoch_file, "--epoch")
    try:
        record = EpochRecord.from_json(text)
        EpochMultisig(record)
    except (CheckpointError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--epoch {epoch_file}", f"not a valid epoch record ({exc})") from None
    return record


def check_epoch(device: dict[str, Any], epoch_file: Path) -> list[str]:
    record = load_epoch(epoch_file)
    profile = None
    if device.get("profile"):
        profile = next(p for p in load_profiles() if p.id == device["profile"])
    return cannot_sign(
        record,
        device.get("fingerprint"),
        profile=profile,
        device=f"{device.get('type')} {device.get('model')}",
        firmware=device.get("firmware"),
    )


def check_profiles(script: str, n: int) -> list[dict[str, Any]]:
    """Every profiled device: can it sign an epoch of n keys under `script`, and why not.

    Each is judged at the newest firmware its profile names as a minimum (the device's
    own and the script's), so what remains is what no firmware update in range fixes.
    """
    rows = []
    for p in load_profiles():
        support = p.script_types.get(RECORD_SCRIPTS.get(script, script))
        wanted = [p.min_version] + (
            [support.min_version] if support and support.min_version else []
        )
        firmware = max(wanted, key=parse_version)
        reasons = check_capability(p, script, n, firmware)
        rows.append({"profile": p.id, "name": p.name, "firmware": firmware,
                     "can_sign": not reasons, "reasons": reasons})
    return rows


def _check_profiles(args: argparse.Namespace) -> int:
    script, n = args.script, args.n
    if args.epoch is not None:
        record = load_epoch(args.epoch)
        script, n = record.script, record.n
    if script is None or n is None:
        raise InputError("--profiles", "needs --epoch FILE, or --script and --n")
    if n < 1:
        raise InputError("--n", f"{n} is not a number of validators (1 or more)")
    rows = check_profiles(script, n)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{script}, n={n}:")
        for r in rows:
            verdict = "can sign" if r["can_sign"] else "cannot sign"
            print(f"  {r['name']} ({r['profile']}, firmware {r['firmware']}): {verdict}")
            for reason in r["reasons"]:
                print(f"      - {reason}")
    return 0 if any(r["can_sign"] for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bft-anchor device", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="connected devices with their matching profile")
    ls.add_argument("--emulators", action="store_true", help="include emulators (HWI's probe)")
    ls.add_argument("--json", action="store_true", help="print the devices as JSON")
    ck = sub.add_parser("check", help="can the device sign this epoch's multisig, and if not why")
    ck.add_argument("--epoch", type=Path, metavar="FILE", help="epoch record JSON")
    ck.add_argument("--profiles", action="store_true",
                    help="no device: answer for every firmware profile (with --epoch, or "
                    "--script and --n)")
    ck.add_argument("--script", choices=sorted(RECORD_SCRIPTS), help="with --profiles")
    ck.add_argument("--n", type=int, help="with --profiles: the epoch's number of keys")
    ck.add_argument("--fingerprint", help="which device (default: the only one)")
    ck.add_argument("--emulators", action="store_true", help="include emulators (HWI's probe)")
    ck.add_argument("--json", action="store_true", help="print the answer as JSON")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "check" and args.profiles:
        return _check_profiles(args)
    if args.action == "check":
        if args.epoch is None:
            raise InputError("--epoch", "is needed (or --profiles with --script and --n)")
        load_epoch(args.epoch)  # a bad file is named before any device is probed
    devices = list_devices(args.emulators)
    if args.action == "list":
        if args.json:
            print(json.dumps(devices, indent=1))
        elif not devices:
            print("no device found (plug one in and unlock it; --emulators to include them)")
        for d in devices if not args.json else []:
            print(
                f"{d['type']:<10} {d['model'] or '-':<16} {d['fingerprint'] or '-':<9} "
                f"fw {d['firmware'] or '?':<10} profile {d['profile'] or 'NONE':<24} {d['path']}"
                f"{'  error: ' + d['error'] if d['error'] else ''}"
            )
        return 0
    chosen = [d for d in devices if args.fingerprint in (None, d["fingerprint"])]
    if len(chosen) != 1:
        subject = f"--fingerprint {args.fingerprint}" if args.fingerprint else "device"
        raise InputError(subject, f"{len(chosen)} matching devices" +
                         ("; name one with --fingerprint" if len(chosen) > 1 else
                          " (plug one in and unlock it; --emulators to include them)"))
    reasons = check_epoch(chosen[0], args.epoch)
    if args.json:
        print(
            json.dumps({"device": chosen[0], "can_sign": not reasons, "reasons": reasons}, indent=1)
        )
    else:
        print("can sign" if not reasons else "cannot sign:\n  - " + "\n  - ".join(reasons))
    return 0 if not reasons else 1
