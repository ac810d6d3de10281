"""`bft-anchor tui --config FILE`: the operator's console for one appliance.

Without --control the console runs the appliance itself (and, with --link, answers the
node on the serial link); with --control it attaches to a running `bft-anchor appliance
serve` through its control socket. Logs go to a file, never to the terminal the
console draws on.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bftanchor.usage import ArgumentParser, float_range

EXIT_OK, EXIT_USAGE = 0, 2


def _log_to_file(path: Path, verbose: int) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bft-anchor tui", description=__doc__)
    p.add_argument("--config", required=True, type=Path, help="the appliance's appliance.toml")
    p.add_argument("--control", type=Path, metavar="SOCK",
                   help="attach to a running `appliance serve` through its control socket "
                   "instead of starting the appliance here")
    p.add_argument("--link", metavar="PORT",
                   help="also serve the node's serial link (/dev/ttyUSB0, a pty); not with "
                   "--control")
    p.add_argument("--secret-file", type=Path, help="the link's pairing secret")
    p.add_argument("--approval", choices=["auto", "manual"],
                   help="start the appliance in this mode (journaled); not with --control")
    p.add_argument("--log", type=Path, help="log file (default: tui.log beside the config)")
    p.add_argument("--poll", type=float_range(0.05, 3600), default=1.0,
                   help="seconds between refreshes")
    p.add_argument("--device-poll", type=float_range(0.1, 3600), default=3.0,
                   help="seconds between device checks")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail in the log file (repeat for debug)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.control and (args.link or args.approval):
        print("bft-anchor tui: --link and --approval need the appliance here (no --control)",
              file=sys.stderr)
        return EXIT_USAGE
    if not args.config.is_file():
        print(f"bft-anchor tui: no config file {args.config}", file=sys.stderr)
        return EXIT_USAGE
    try:
        _log_to_file(args.log or args.config.parent / "tui.log", args.verbose)
    except OSError as exc:
        print(f"bft-anchor tui: log file: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from appliance.api import ConfigError, SignerError
    from bftanchor.deployment import DeploymentError
    from tui.app import OperatorConsole
    from tui.backend import Backend, BackendError, InProcessBackend, RemoteBackend

    backend: Backend
    try:
        if args.control:
            backend = RemoteBackend.from_config(args.config, args.control)
        else:
            ip = InProcessBackend.from_config(args.config)
            if args.approval and ip.service.queue.mode != args.approval:
                ip.service.queue.set_mode(args.approval, who="tui --approval")
            if args.link:
                secret = args.secret_file.read_bytes().strip() if args.secret_file else None
                ip.serve_link(args.link, secret)
            backend = ip
    except (ConfigError, DeploymentError, SignerError, BackendError, ValueError,
            OSError) as exc:
        print(f"bft-anchor tui: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        OperatorConsole(backend, poll=args.poll, device_poll=args.device_poll).run()
    finally:
        backend.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
