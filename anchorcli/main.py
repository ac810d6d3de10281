"""`bft-anchor`: the one command line for the devnet, the audit, the appliance and devices.

Logs go to standard error; results (and --json reports) to standard output.
Exit status: 0 success, 1 the job ran and found a problem (audit violation, refusal),
2 bad usage or input. A failure is ONE line on standard error naming the input
(anchorcli/errors.py); `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from anchorcli.errors import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, report
from bftanchor.usage import (
    ArgumentParser,
    InputError,
    UsageError,
    float_range,
    int_range,
    read_text,
)

EXIT_FAIL = EXIT_PROBLEM


def _setup_logging(verbose: int) -> None:
    from anchorcli.logformat import formatter

    level = logging.WARNING - 10 * verbose
    root = logging.getLogger()
    if root.handlers:  # configured already (as logging.basicConfig would leave it)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(sys.stderr))  # journald priorities under systemd
    root.addHandler(handler)
    root.setLevel(max(level, logging.DEBUG))


def _check_datadir(datadir: Path, resume: bool = False) -> None:
    """A devnet's --datadir must be a new or empty directory: it never overwrites seeds."""
    import os

    subject = f"--datadir {datadir}"
    if datadir.exists() and not datadir.is_dir():
        raise UsageError(subject, "is a file, not a directory")
    if resume and not datadir.is_dir():
        raise UsageError(subject, "does not exist: nothing to resume")
    if datadir.is_dir():
        if any((datadir / "pow").glob("*/*.pid")) or any((datadir / "pow").glob("*.pid")):
            raise UsageError(subject, "is in use by a running PoW node (a .pid file in pow/)")
        if resume:
            for name in ("deployment.json", "epochs.json"):
                if not (datadir / name).is_file():
                    raise UsageError(subject, f"holds no {name}: nothing to resume")
        elif (datadir / "deployment.json").exists() or any(datadir.glob("*/*/seed.txt")):
            raise UsageError(subject, "already holds a devnet (deployment.json, seeds); "
                             "--resume continues it, or use a new directory: a devnet "
                             "never overwrites seeds")
        if not os.access(datadir, os.W_OK | os.X_OK):
            raise UsageError(subject, "is not writable")
        return
    try:
        datadir.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(subject, f"cannot be created ({exc.strerror or exc})") from None


def cmd_devnet(args: argparse.Namespace) -> int:
    from anchornode.devnet import (
        DevnetOptions,
        epoch_plan,
        print_progress,
        run_devnet,
        stderr_progress,
    )
    from anchornode.fees import FeePolicy
    from bftanchor.errors import DescriptorError

    try:
        sizes = [int(x) for x in str(args.validators).split(",")]
        if not sizes or any(n < 1 for n in sizes):
            raise ValueError
    except ValueError:
        raise UsageError("--validators", f"{args.validators!r} is not N or N1,N2,... "
                         "(positive validator counts, one per epoch)") from None
    if args.epochs is None:
        args.epochs = max(3, len(sizes))
    if args.nodes and max(sizes) > 20:
        raise UsageError("--validators", "--nodes runs wsh epochs of at most 20 validators")
    if args.handover_margin + 1 >= args.rounds_per_epoch:
        # The deployment's handover window is M + 1 rounds, and must be shorter than an epoch.
        raise UsageError("--handover-margin", f"{args.handover_margin} must be less than "
                         f"--rounds-per-epoch - 1 ({args.rounds_per_epoch - 1})")
    if args.resume and (args.datadir is None or args.nodes):
        raise UsageError("--resume", "needs --datadir DIR of a kept devnet (not with --nodes)")
    if args.datadir is not None:
        _check_datadir(args.datadir, args.resume)
    opts = DevnetOptions(
        validators=sizes[0],
        sizes=sizes,
        epochs=args.epochs,
        datadir=args.datadir,
        rounds_per_epoch=args.rounds_per_epoch,
        interval=args.interval,
        handover_margin=args.handover_margin,
        appliances=args.appliances or ("process" if max(sizes) <= 20 else "inprocess"),
        signer=args.signer,
        fee=FeePolicy(override=args.fee_rate) if args.fee_rate else FeePolicy(),
        resume=args.resume,
    )
    try:
        # Each epoch's script is chosen from its n and what the signers sign: wsh up to 20
        # (a Jade: 15), tapscript above (software signers only; no device signs it).
        plan = epoch_plan(opts)
    except DescriptorError as exc:
        hint = "; use --signer software" if args.signer == "hwi" else ""
        raise UsageError("--validators", f"{args.validators}: {exc}{hint}") from None
    logging.getLogger("bft_anchor.devnet").info(
        "epochs: %s", ", ".join(f"{e}: n={n} {script}" for e, (n, script) in enumerate(plan))
    )
    progress = stderr_progress if args.json else print_progress
    if args.nodes:
        from anchornode.network_devnet import run_network_devnet

        report = run_network_devnet(sizes[0], args.epochs, args.datadir, progress)
    else:
        report = run_devnet(opts, progress)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        audit = report["audit"]
        handovers = sum(1 for c in report["checkpoints"] if c["handover"])
        print(
            f"audit {'OK' if audit['ok'] else 'FAILED'}: {len(report['checkpoints'])} "
            f"checkpoints, {handovers} handovers, {len(report['epochs'])} epochs on "
            f"{report['chain']}"
        )
        for v in audit["violations"]:
            print(f"  violation: {v}")
    return EXIT_OK if report["audit"]["ok"] else EXIT_FAIL


def cmd_audit(args: argparse.Namespace) -> int:
    """Exit 0: the chain passes; 1: violations (each named); 2: the audit could not run
    (unreadable file, node unreachable or refusing the credentials) or could not judge the
    whole chain (a record it needs is missing), with one line naming what."""
    from anchornode.audit import AuditInputError, audit_chain, format_table
    from anchornode.pow.rpc import PowRpc, url_with_auth
    from bftanchor.deployment import Deployment, DeploymentError, load_epochs

    def fail(message: str) -> int:
        print(f"bft-anchor audit: {message}", file=sys.stderr)
        return EXIT_USAGE

    try:
        deployment = Deployment.load(args.deployment)
        records = load_epochs(args.epochs) if args.epochs else []
    except DeploymentError as exc:
        return fail(str(exc))
    if args.from_height is not None and args.from_height < 0:
        return fail(f"--from-height {args.from_height} is negative")
    problem = _bad_rpc_url(args.rpc)
    if problem:
        shown = re.sub(r"//[^@/]*@", "//***@", args.rpc)  # never echo a password
        return fail(f"--rpc {shown!r}: {problem}")
    try:
        url = url_with_auth(args.rpc, args.rpc_user, args.rpc_password, args.rpc_cookie)
    except OSError as exc:
        return fail(f"cannot read the RPC cookie {args.rpc_cookie}: {exc.strerror or exc}")
    except ValueError:
        return fail(f"the RPC cookie {args.rpc_cookie} does not hold USER:PASSWORD")
    try:
        report = audit_chain(PowRpc(url), deployment, records, args.from_height)
    except AuditInputError as exc:
        return fail(str(exc))
    print(json.dumps(report.to_json(), indent=1) if args.json else format_table(report))
    if report.violations:
        return EXIT_FAIL
    if report.missing:
        return fail(report.missing[0])
    return EXIT_OK


def _bad_rpc_url(url: str) -> str | None:
    """What is wrong with a node's RPC URL, or None."""
    from urllib.parse import urlparse

    try:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        port = parsed.port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        return f"the scheme must be http or https, not {parsed.scheme!r}"
    if not parsed.hostname:
        return "no host"
    if port is None:
        return "no port (e.g. http://127.0.0.1:19443)"
    return None


def _open_appliance(config: Path):
    """The appliance a config names, or an InputError naming the config or its device."""
    from appliance.config import ApplianceConfig, ConfigError
    from appliance.runtime import open_appliance
    from appliance.signers.base import SignerError
    from bftanchor.deployment import DeploymentError

    if config.is_dir():
        raise InputError(f"--config {config}", "is a directory, not a file")
    if not config.exists():
        raise InputError(f"--config {config}", "no such file")
    try:
        cfg = ApplianceConfig.load(config)
    except ConfigError as exc:
        raise InputError(None, str(exc)) from exc
    try:
        return cfg, open_appliance(cfg)
    except SignerError as exc:
        raise InputError(f"signer of {config}", str(exc)) from exc
    except (ConfigError, DeploymentError) as exc:
        raise InputError(f"--config {config}", str(exc)) from exc
    except OSError as exc:
        raise InputError(f"{exc.filename or config}", exc.strerror or str(exc)) from exc


def cmd_appliance_sign(args: argparse.Namespace) -> int:
    # An unreadable request file is bad input (exit 2), named before the appliance opens.
    if args.request == "-":
        text = sys.stdin.read()
    else:
        text = read_text(args.request, "--request")
    _, appliance = _open_appliance(args.config)
    # Whatever the request holds, it ends as a verdict: a request that is not a JSON
    # object is a journaled refusal naming what was expected, not a usage error.
    try:
        req = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep to read
        outcome = appliance.refuse_request([f"the request is not JSON ({exc}), expected an "
                                            "object {psbt, qc, records, lineage}"])
    else:
        if isinstance(req, dict):
            outcome = appliance.handle_sign(
                req.get("psbt"), req.get("qc"), req.get("records", []), req.get("lineage")
            )
        else:
            outcome = appliance.refuse_request([
                f"the request is a JSON {type(req).__name__}, expected an object "
                "{psbt, qc, records, lineage}"])
    print(json.dumps(outcome.to_json(), indent=1))
    return EXIT_OK if outcome.signed else EXIT_FAIL


def cmd_appliance_journal(args: argparse.Namespace) -> int:
    from appliance.config import ApplianceConfig, ConfigError
    from appliance.interchange import (
        InterchangeConflict,
        InterchangeError,
        export_journal,
        import_journal,
        load_file,
    )
    from appliance.journal import Journal, JournalError
    from bftanchor.deployment import Deployment, DeploymentError

    name = f"bft-anchor appliance journal {args.journal_command}"
    try:
        cfg = ApplianceConfig.load(args.config)
        deployment = Deployment.load(cfg.deployment)
        journal = Journal(cfg.journal, deployment.genesis, cfg.journal_id)
    except (ConfigError, DeploymentError, JournalError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.journal_command == "export":
            text = json.dumps(export_journal(journal), indent=1, sort_keys=True) + "\n"
            if args.out is None:
                sys.stdout.write(text)
            else:
                import os

                # Never overwrite: an export may be the only copy of a journal.
                fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                print(f"exported journal {cfg.journal} to {args.out}", file=sys.stderr)
            return EXIT_OK
        result = import_journal(journal, load_file(args.file), deployment.epoch0)
        journal.log("imported", {"file": str(args.file), **result})
        print(f"imported {args.file}: {result['added']} new of {result['checkpoints']} "
              f"checkpoint(s) into {cfg.journal}")
        return EXIT_OK
    except FileExistsError:
        print(f"{name}: {args.out} exists; not overwriting it", file=sys.stderr)
        return EXIT_USAGE
    except (InterchangeError, JournalError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        # A conflicting history is what the job found (1); an unreadable file is bad input.
        return EXIT_FAIL if isinstance(exc, InterchangeConflict) else EXIT_USAGE
    finally:
        journal.close()


def cmd_appliance_status(args: argparse.Namespace) -> int:
    _, appliance = _open_appliance(args.config)
    print(json.dumps(appliance.status(), indent=1))
    return EXIT_OK


def _read_secret(path: Path | None, what: str = "--secret-file") -> bytes | None:
    if path is None:
        return None
    from bftanchor.usage import read_text

    secret = read_text(path, what).strip().encode()
    if len(secret) < 16:
        raise InputError(f"{what} {path}", f"holds {len(secret)} bytes; use at least 16 "
                         "(e.g. 32 random bytes, hex-encoded)")
    return secret


def _check_link(link: str) -> None:
    """Open and close the serial link once, so a wrong --link is named before serving."""
    import os

    import serial

    from bftanchor.link.transport import open_serial

    try:
        open_serial(link).close()
    except (OSError, serial.SerialException, ValueError) as exc:
        code = getattr(exc, "errno", None)
        reason = os.strerror(code) if isinstance(code, int) else str(exc) or "cannot open"
        raise InputError(f"--link {link}", reason) from exc


def cmd_appliance_serve(args: argparse.Namespace) -> int:
    import signal as sig

    from appliance.serve import ApplianceService

    secret = _read_secret(args.secret_file)
    cfg, appliance = _open_appliance(args.config)
    _check_link(args.link)
    try:
        service = ApplianceService(appliance, cfg.validator_id or "appliance",
                                   args.approval or cfg.approval)
    except (ValueError, OSError) as exc:
        raise InputError(f"--config {args.config}", str(exc)) from exc
    control = args.control or cfg.path.parent / "control.sock"
    try:
        service.serve_control(control)
    except OSError as exc:
        raise InputError(f"--control {control}", exc.strerror or str(exc)) from exc
    for s in (sig.SIGTERM, sig.SIGINT):
        sig.signal(s, lambda *_: service.stop_event.set())
    logging.getLogger("bft_anchor.appliance").warning(
        "appliance %s: link %s, control %s, approval %s", cfg.validator_id, args.link, control,
        service.queue.mode)
    try:
        service.serve_link(args.link, secret)
    except OSError as exc:
        raise InputError(f"--link {args.link}", exc.strerror or str(exc)) from exc
    return EXIT_OK


def _control(path: Path, req: dict) -> dict:
    """One request to a running appliance's control socket, failures named."""
    from appliance.serve import control_call

    subject = f"--control {path}"
    if not path.exists():
        raise InputError(subject, "no such socket (is `bft-anchor appliance serve` running?)")
    if not path.is_socket():
        raise InputError(subject, "is not a socket")
    try:
        reply = control_call(path, req)
    except ConnectionRefusedError:
        raise InputError(subject, "nobody is listening (the appliance has stopped)") from None
    except OSError as exc:
        raise InputError(subject, exc.strerror or str(exc) or type(exc).__name__) from None
    except ValueError as exc:
        raise InputError(subject, f"answered something that is not JSON ({exc})") from None
    if not isinstance(reply, dict):
        raise InputError(subject, "answered something that is not a JSON object")
    return reply


def iso8601(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC (what operators paste into tickets and logs)."""
    from datetime import UTC, datetime

    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines)


def format_pending(items: list[dict]) -> str:
    if not items:
        return "no request is waiting"
    rows = []
    for it in items:
        sm = it.get("summary") or {}
        rate = sm.get("fee_rate")
        rows.append([it.get("id"), it.get("created"), it.get("state"),
                     sm.get("epoch"), sm.get("round"),
                     f"{sm['fee']} sat ({rate} sat/vB)" if sm.get("fee") is not None else None,
                     ("yes -> epoch " + str(sm.get("dest_epoch"))) if sm.get("handover")
                     else "no", sm.get("txid")])
    return _table(["id", "created (UTC)", "state", "epoch", "round", "fee", "handover",
                   "txid"], rows)


def format_history(rows: list[dict]) -> str:
    if not rows:
        return "the journal holds no decision yet"
    out = []
    for r in rows:
        detail = r.get("detail")
        reasons = detail.get("reasons") if isinstance(detail, dict) else None
        why = "; ".join(reasons) if isinstance(reasons, list) else (
            detail.get("reason") if isinstance(detail, dict) else None)
        out.append([r.get("seq"), r.get("ts"), r.get("decision"), r.get("epoch"),
                    r.get("round"), r.get("txid"), why])
    return _table(["seq", "time (UTC)", "decision", "epoch", "round", "txid", "why"], out)


def cmd_appliance_control(args: argparse.Namespace) -> int:
    req: dict = {"cmd": args.appliance_command}
    if args.appliance_command in ("approve", "refuse"):
        req["id"] = args.id
    if args.appliance_command == "refuse" and args.reason:
        req["reason"] = args.reason
    if args.appliance_command == "mode":
        req["mode"] = args.mode
    if args.appliance_command == "history":
        req["limit"] = args.limit
    reply = _control(args.control, req)
    if not reply.get("ok"):
        # The appliance could not do it (no such pending id, a bad mode): bad input, exit 2.
        raise InputError(f"{args.appliance_command} {getattr(args, 'id', '')}".strip(),
                         str(reply.get("error") or reply.get("problems") or "refused"))
    # Times in ISO 8601, in the table and in --json alike.
    for item in reply.get("pending", []):
        item["created"] = iso8601(item.get("created"))
    for row in reply.get("history", []):
        row["ts"] = iso8601(row.get("ts"))
    cmd = args.appliance_command
    outcome = reply.get("outcome") if cmd == "approve" else None
    signed = bool(outcome.get("signed")) if isinstance(outcome, dict) else True
    if args.json:
        print(json.dumps(reply, indent=1))
    elif cmd == "pending":
        print(format_pending(reply["pending"]))
    elif cmd == "history":
        print(format_history(reply["history"]))
    elif cmd == "approve":
        summary = (outcome or {}).get("summary") or {}
        print(f"signed {summary.get('txid', '')}".rstrip() if signed else
              "not signed: " + "; ".join((outcome or {}).get("reasons") or ["refused"]))
    elif cmd == "refuse":
        print(f"refused {args.id} (journaled)")
    else:
        print(f"approval mode is now {reply.get('mode', args.mode)} (journaled)")
    # Approving what the appliance then refuses to sign is the job finding a problem.
    return EXIT_OK if signed else EXIT_FAIL


def cmd_appliance_init(args: argparse.Namespace) -> int:
    import os

    from embit import bip39

    from appliance.config import EXAMPLE

    d = args.dir
    if d.exists() and not d.is_dir():
        raise InputError(f"directory {d}", "is a file")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"directory {d}", exc.strerror or str(exc)) from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"directory {d}", "is not writable")
    cfg = d / "appliance.toml"
    if cfg.exists() and not args.force:
        raise UsageError(str(cfg), "exists (--force to overwrite the config; the seed is "
                         "never overwritten)")
    if cfg.is_dir():
        raise InputError(str(cfg), "is a directory")
    text = EXAMPLE.replace('validator_id = "v0"', f'validator_id = "{args.validator_id}"')
    text = text.replace("max_fee_sat = 100000", f"max_fee_sat = {args.max_fee_sat}")
    text = text.replace("max_fee_rate = 200.0", f"max_fee_rate = {args.max_fee_rate}")
    if bool(args.device_type) != bool(args.device_path):
        raise UsageError("--device-type/--device-path", "go together")
    device = args.fingerprint or args.device_path
    if device:
        text = text.replace('kind = "software"', 'kind = "hwi"')
        text = text.replace('seed_file = "seed.txt"', "# seed_file = (none: the device holds it)")
    if args.fingerprint:
        text = text.replace('# fingerprint = "d8e50907"', f'fingerprint = "{args.fingerprint}"')
    if args.device_path:
        text = text.replace('# fingerprint = "d8e50907"',
                            f'device_type = "{args.device_type}"\n'
                            f'device_path = "{args.device_path}"')
    new_seed = False
    if not device:
        import os
        import secrets

        seed = d / "seed.txt"
        # Never overwrite a seed, --force or not: it may be the only copy of a key
        # that locks the coin. O_EXCL makes "create only if absent" one atomic step.
        try:
            fd = os.open(seed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(bip39.mnemonic_from_bytes(secrets.token_bytes(32)) + "\n")
                f.flush()
                os.fsync(f.fileno())
            new_seed = True
    # Bind the journal's identity into the config: from now on the appliance refuses to
    # start without this very journal. An existing journal is kept, never overwritten.
    from appliance.journal import Journal, JournalError

    try:
        journal_id = Journal.create(d / "journal.sqlite")
    except JournalError as exc:
        print(f"bft-anchor appliance init: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = text.replace('# journal_id = "..."', f'journal_id = "{journal_id}"')
    cfg.write_text(text)
    print(f"wrote {cfg}" + (f" and a new seed in {d / 'seed.txt'}" if new_seed else "")
          + (f" (kept the existing seed {d / 'seed.txt'})"
             if not device and not new_seed else ""))
    print("next: `bft-anchor appliance share` to write this validator's key share "
          "(docs/operations.md)")
    return EXIT_OK


def cmd_appliance_share(args: argparse.Namespace) -> int:
    from appliance.config import ApplianceConfig, ConfigError
    from appliance.share import bft_pubkey_of, make_share
    from appliance.signers.base import SignerError
    from bftanchor.share import ShareError

    try:
        cfg = ApplianceConfig.load(args.config)
        share = make_share(cfg, args.chain, args.epoch,
                           bft_pubkey_of(args.bft_pubkey, args.bft_key_file), args.script)
        out = args.out or Path(f"share-{share.validator_id}-e{args.epoch}.json")
        share.save(out)
    except (ConfigError, ShareError, SignerError, ValueError, OSError) as exc:
        print(f"bft-anchor appliance share: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out}: {share.validator_id} epoch {share.epoch} key {share.pow_key}")
    print(f"device: {share.device.get('model')} firmware {share.device.get('firmware')}")
    return EXIT_OK


def cmd_appliance_install(args: argparse.Namespace) -> int:
    from appliance.config import ApplianceConfig, ConfigError
    from appliance.share import install_deployment
    from appliance.signers.base import SignerError
    from bftanchor.share import ShareError

    try:
        cfg = ApplianceConfig.load(args.config)
        print(install_deployment(cfg, args.deployment, args.fingerprint))
    except (ConfigError, ShareError, SignerError, ValueError, OSError) as exc:
        print(f"bft-anchor appliance install: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def appliance_config_arg(p: argparse.ArgumentParser) -> None:
    """--config, for the appliance actions that open its directory (not init, nor the
    control-socket ones)."""
    p.add_argument("--config", required=True, type=Path, help="the appliance's appliance.toml")


def _add_bootstrap_actions(apsub: argparse._SubParsersAction) -> None:
    """`appliance share` and `appliance install`: the appliance's steps of a bootstrap."""
    sh = apsub.add_parser("share", help="write this validator's key share for an epoch",
                          description="Read the epoch's BIP48 key from the device (or seed) "
                          "and write a share file for the coordinator.")
    appliance_config_arg(sh)
    sh.add_argument("--chain", required=True, help="litecoin-test, bitcoin-signet, ...")
    sh.add_argument("--epoch", type=int_range(0), default=0,
                    help="the epoch whose key to share (default 0)")
    sh.add_argument("--bft-pubkey", help="the validator's BFT public key (66 hex)")
    sh.add_argument("--bft-key-file", type=Path, help="or the BFT key file to derive it from")
    sh.add_argument("--out", type=Path, help="default share-<id>-e<epoch>.json")
    sh.add_argument("--script", choices=["wsh-sortedmulti", "tr-sortedmulti_a"],
                    default="wsh-sortedmulti",
                    help="the epoch's script: its key is on BIP48 script type 2' (wsh, the "
                    "default) or 3' (tapscript, for more than 20 validators); a device that "
                    "cannot sign tapscript multisig is refused here")
    sh.set_defaults(func=cmd_appliance_share)
    ins = apsub.add_parser("install", help="check, register and install the deployment file",
                           description="Check the deployment against this appliance and the "
                           "wallet fingerprint received out of band, register epoch 0's "
                           "multisig on the device, and put the file where the config says.")
    appliance_config_arg(ins)
    ins.add_argument("--deployment", required=True, type=Path,
                     help="the deployment file the coordinator sent")
    ins.add_argument("--fingerprint", required=True,
                     help="the wallet fingerprint as received out of band, e.g. 'ABCD 1234'")
    ins.set_defaults(func=cmd_appliance_install)


def _delegate(module: str, func: str = "main"):
    def run(args: argparse.Namespace) -> int:
        import importlib

        mod = importlib.import_module(module)
        return int(getattr(mod, func)(args.rest) or 0)

    return run


DELEGATED = {
    "node": ("anchornode.cli", "main_node", "run one validator's online process"),
    "status": ("anchornode.cli", "main_status", "the checkpoint chain as an operator sees it"),
    "emulator": ("appliance.emulator.cli", "main",
                 "run a hardware-wallet emulator (Jade protocol)"),
    "device": ("appliance.devices.cli", "main",
               "list signing devices and check what they can sign"),
    "udev": ("appliance.devices.udev", "main",
             "install udev rules for devices and the serial link"),
    "tui": ("tui.cli", "main", "the operator's console"),
}
# Bootstrapping a deployment (docs/operations.md): the coordinator's and the node's side.
DELEGATED.update({
    "deploy": ("anchornode.bootstrap", "main",
               "bootstrap a deployment: key shares -> draft -> genesis coin -> deployment file"),
    "doctor": ("anchornode.doctor", "main", "check a node's or appliance's set-up, naming fixes"),
})


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bft-anchor",
        description="Anchor a BFT chain's quorum certificates in a proof-of-work chain.",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output on standard error (repeat for debug)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--debug", action="store_true",
                   help="on failure, print the traceback too (accepted anywhere on the line)")
    p.add_argument("--version", action="version", version=f"bft-anchor {_version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "devnet",
        help="run a whole local network on regtest and audit it",
        description="Start a regtest PoW node and N validators, run E epochs of "
        "checkpoints with a handover before each epoch's end, then audit the "
        "chain. Exit 0 only when the audit passes.",
    )
    d.add_argument("--validators", default="4", metavar="N[,N...]",
                   help="validators (default 4), or one count per epoch, e.g. 4,30,7 (the "
                   "last repeats); an epoch of more than 20 (a Jade: 15) is locked by "
                   "tr(NUMS, sortedmulti_a), which needs --signer software")
    d.add_argument("--epochs", type=int_range(1, 1000), default=None, metavar="E",
                   help="epochs, 1..1000 (default 3, or as many as --validators lists)")
    d.add_argument(
        "--datadir",
        type=Path,
        help="keep the node's data (DIR/pow) and the "
        "deployment files (DIR) here instead of a temporary directory; DIR must be new or "
        "empty (a devnet never overwrites seeds)",
    )
    d.add_argument("--resume", action="store_true",
                   help="continue the devnet kept in --datadir DIR: its chain, validators, "
                   "journals and deployment, for --epochs more epochs after the coin's "
                   "(its validators, rounds per epoch and window are the kept deployment's)")
    d.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    d.add_argument("--rounds-per-epoch", type=int_range(2, 100000), default=20, metavar="R",
                   help="BFT rounds per epoch, 2..100000 (default 20)")
    d.add_argument("--interval", type=int_range(1, 100000), default=5, metavar="I",
                   help="rounds between checkpoints, at least 1 (default 5)")
    d.add_argument(
        "--handover-margin",
        type=int_range(1, 100000),
        default=3,
        metavar="M",
        help="rounds before an epoch's end at which the coin is handed over (the deployment's "
        "handover_window is M + 1 rounds); at least 1 and less than --rounds-per-epoch - 1 "
        "(default 3)",
    )
    d.add_argument("--fee-rate", type=float_range(1.0, 200.0), metavar="SAT_PER_VB",
                   help="override the fee rate, 1..200 sat/vB (the devnet appliances refuse "
                   "more than 200)")
    d.add_argument("--signer", choices=["hwi", "software"], default="hwi",
                   help="sign through HWI on one Jade emulator per validator (default), or "
                   "with software keys")
    d.add_argument("--nodes", action="store_true",
                   help="run every validator's node as its own process too (peer protocol, "
                   "schedule, failover, two PoW nodes; software signers)")
    d.add_argument("--appliances", choices=["process", "inprocess"], default=None,
                   help="each appliance its own process on a pty serial link (default up to "
                   "20 validators), or all in this process (default above 20)")
    d.set_defaults(func=cmd_devnet)

    a = sub.add_parser(
        "audit",
        help="walk and check the checkpoint chain on a PoW node",
        description="Verify every epoch record's certificate back to the deployment's "
        "epoch 0, follow the coin's spends from the genesis outpoint and check every "
        "checkpoint (docs/protocol.md, \"The audit's rules\"). Exit 0 when the chain "
        "passes, 1 on any violation (each named), 2 when the audit cannot run or cannot "
        "judge the whole chain (a file, the node, or a record it needs), naming it.",
    )
    a.add_argument("--rpc", required=True, help="node RPC URL, e.g. http://user:pw@127.0.0.1:19443")
    a.add_argument("--rpc-user", help="RPC user name (or put it in the URL, or use --rpc-cookie)")
    a.add_argument("--rpc-password", help="RPC password")
    a.add_argument("--rpc-cookie", type=Path, help="the node's .cookie file")
    a.add_argument(
        "--deployment", required=True, type=Path, metavar="FILE",
        help="the deployment file: chain, magic, genesis coin, epoch 0 (trusted), handover "
        "window",
    )
    a.add_argument(
        "--epochs", type=Path, metavar="FILE",
        help="the epochs file: a JSON list of epoch records; each is checked by its "
        "certificate back to the deployment's epoch 0",
    )
    a.add_argument(
        "--from-height", type=int_range(0), metavar="H",
        help="the height of the genesis transaction's block: start there (for a node "
        "without -txindex)",
    )
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.set_defaults(func=cmd_audit)

    ap = sub.add_parser("appliance", help="the signing appliance")
    apsub = ap.add_subparsers(dest="appliance_command", required=True, metavar="ACTION")
    s = apsub.add_parser(
        "sign",
        help="decide and sign one request (JSON file) and exit",
        description="Read {psbt, qc, records} and answer with the signed PSBT "
        "or the refusal's reasons. Exit 1 when refused.",
    )
    appliance_config_arg(s)
    s.add_argument("--request", required=True, help="request JSON file, or - for stdin")
    s.set_defaults(func=cmd_appliance_sign)
    jn = apsub.add_parser(
        "journal", help="move a journal to a new machine: export, then import",
        description="Export this appliance's journal to one JSON file (every checkpoint it "
        "signed or adopted, and its watermark), or import such a file into the journal of a "
        "freshly initialized appliance. Import only adds (it never lowers a watermark) and "
        "refuses a history that conflicts with the journal's own. Exit 1 when refused.")
    jsub = jn.add_subparsers(dest="journal_command", required=True, metavar="ACTION")
    je = jsub.add_parser("export", help="write the journal's interchange file")
    appliance_config_arg(je)
    je.add_argument("--out", type=Path, help="file to write (never overwritten); default stdout")
    ji = jsub.add_parser("import", help="merge an interchange file into this journal")
    appliance_config_arg(ji)
    ji.add_argument("file", type=Path, help="the interchange file `journal export` wrote")
    jn.set_defaults(func=cmd_appliance_journal)
    st = apsub.add_parser("status", help="journal head, expected coin, epochs held")
    appliance_config_arg(st)
    st.set_defaults(func=cmd_appliance_status)
    sv = apsub.add_parser("serve", help="run the headless appliance on its serial link",
                          description="Answer the node over the serial link and the operator "
                          "over a local control socket. Manual approval holds every request "
                          "the policy allows until an operator approves it.")
    appliance_config_arg(sv)
    sv.add_argument("--link", required=True, help="serial port (/dev/ttyUSB0, a pty, fd:N)")
    sv.add_argument("--secret-file", type=Path, help="pairing secret: every frame is MACed")
    sv.add_argument("--control", type=Path, help="control socket (default: beside the config)")
    sv.add_argument("--approval", choices=["auto", "manual"], help="override the config")
    sv.set_defaults(func=cmd_appliance_serve)
    it = apsub.add_parser("init", help="write a fresh appliance directory")
    it.add_argument("dir", type=Path, help="the directory to write (created if missing)")
    it.add_argument("--validator-id", default="v0", help="this validator's id (default v0)")
    it.add_argument("--fingerprint", help="use a hardware wallet with this fingerprint")
    it.add_argument("--device-type", help="or the device's HWI type (jade, ...) with its path")
    it.add_argument("--device-path", help="e.g. /dev/ttyACM0, or tcp:127.0.0.1:30121 for an "
                    "emulator")
    it.add_argument("--max-fee-sat", type=int_range(1, 10**8), default=100000,
                    help="refuse a fee above this many satoshi (default 100000)")
    it.add_argument("--max-fee-rate", type=float_range(1.0, 10000.0), default=200.0,
                    help="refuse a fee rate above this, sat/vB (default 200)")
    it.add_argument("--force", action="store_true",
                    help="rewrite the config; never the seed or the journal")
    it.set_defaults(func=cmd_appliance_init)
    _add_bootstrap_actions(apsub)
    for name, helptext in (("pending", "requests held for approval"),
                           ("approve", "approve a held request"),
                           ("refuse", "refuse a held request"),
                           ("mode", "switch approval mode (journaled)"),
                           ("history", "the journal's decisions, newest first")):
        c = apsub.add_parser(name, help=helptext)
        c.add_argument("--control", required=True, type=Path, help="the appliance's socket")
        if name in ("approve", "refuse"):
            c.add_argument("id", help="the request's id, as `pending` lists it")
        if name == "refuse":
            c.add_argument("--reason", help="why (journaled with the refusal)")
        if name == "mode":
            c.add_argument("mode", choices=["auto", "manual"], help="the new approval mode")
        if name == "history":
            c.add_argument("--limit", type=int_range(1, 100000), default=50,
                           help="how many decisions to show (default 50)")
        c.add_argument("--json", action="store_true",
                       help="print the appliance's JSON reply instead of a table or a line "
                       "(times in ISO 8601 either way)")
        c.set_defaults(func=cmd_appliance_control)

    for name, (module, func, helptext) in DELEGATED.items():
        e = sub.add_parser(name, help=helptext, add_help=False)
        e.add_argument("rest", nargs=argparse.REMAINDER, help=f"see bft-anchor {name} --help")
        e.set_defaults(func=_delegate(module, func))
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bft-anchor")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _prog(argv: list[str]) -> str:
    """`bft-anchor` and the command words in argv, for naming what failed."""
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is None:
        return "bft-anchor"
    words = ["bft-anchor", argv[first]]
    nxt = argv[first + 1] if first + 1 < len(argv) else ""
    if argv[first] in ("appliance", "device", "udev", "emulator", "journal") and \
            nxt[:1].isalpha():
        words.append(nxt)
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere: no command has an argument of that name
    argv = [a for a in argv if a != "--debug"]
    try:
        return _run(argv)
    except SystemExit as exc:  # --help, --version, or a delegated command's own exit
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return EXIT_USAGE
        return int(exc.code or 0)
    except BaseException as exc:  # noqa: BLE001 - the one place every failure becomes a line
        return report(_prog(argv), exc, debug)


def _run(argv: list[str]) -> int:
    parser = build_parser()
    # Delegated commands parse their own arguments (their --help included).
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] in DELEGATED:
        module, func = DELEGATED[argv[first]][:2]
        flags = argv[:first]
        unknown = [f for f in flags if f not in ("-q", "--quiet", "--verbose")
                   and not (f.startswith("-") and set(f[1:]) == {"v"})]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        verbose = sum(a.count("v") for a in flags if a.startswith("-") and set(a[1:]) == {"v"})
        verbose += flags.count("--verbose")
        _setup_logging(0 if ("-q" in flags or "--quiet" in flags) else verbose)
        ns = argparse.Namespace(rest=argv[first + 1 :])
        return _delegate(module, func)(ns)
    args = parser.parse_args(argv)
    _setup_logging(0 if args.quiet else args.verbose)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
