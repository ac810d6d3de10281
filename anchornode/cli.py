"""`bft-anchor node` and `bft-anchor status`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from anchornode.config import EXAMPLE, NodeConfig, NodeConfigError
from anchornode.pow.rpc import PowRpc, RpcError, url_with_auth
from anchornode.qcsource import DirectorySource, open_source
from bftanchor.deployment import Deployment, DeploymentError
from bftanchor.usage import ArgumentParser, InputError, int_range, read_text

log = logging.getLogger("bft_anchor.node")


def _rpcs(cfg: NodeConfig) -> list[PowRpc]:
    """One client per PoW node; a cookie is read when connecting and again on a 401, so a
    node that restarts (new cookie) or is down at start is picked up when it is back."""
    out = []
    for n in cfg.pow_nodes:
        if n.cookie is not None:
            out.append(PowRpc(n.url, cookie_file=n.cookie))
        else:
            out.append(PowRpc(url_with_auth(n.url, n.user, n.password)))
    return out


def _appliance_client(cfg: NodeConfig) -> Any:
    link = cfg.appliance_link
    if link.startswith("inprocess:"):
        from anchornode.appliance_client import InProcessAppliance
        from appliance.config import ApplianceConfig
        from appliance.runtime import open_appliance

        return InProcessAppliance(open_appliance(ApplianceConfig.load(Path(link[10:]))))
    from anchornode.link_client import LinkApplianceClient

    secret = cfg.appliance_secret.read_bytes().strip() if cfg.appliance_secret else None
    if secret is not None and len(secret) < 16:
        raise ValueError(f"pairing secret in {cfg.appliance_secret} is {len(secret)} bytes; "
                         "use at least 16")
    return LinkApplianceClient(link, secret=secret)


def build_node_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bft-anchor node",
        description="Run one validator's online process: follow the checkpoint coin on the "
        "PoW nodes, propose checkpoints when this validator is the initiator, check and "
        "pass peers' proposals to the appliance, deliver to every PoW node.",
    )
    p.add_argument("--config", type=Path, help="node TOML config")
    p.add_argument("--example-config", action="store_true", help="print an example config")
    p.add_argument("--fee-rate", type=float, help="operator override of the fee rate (sat/vB)")
    return p


def _bft_secret(path: Path) -> bytes:
    """The validator's BFT secret key: 64 hex digits in bft_key_file, or an InputError
    naming the file (never Python's "non-hexadecimal number found in fromhex()")."""
    text = read_text(path, "bft_key_file").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != 32:
        raise InputError(f"bft_key_file {path}", "must hold the BFT secret key as 64 hex digits")
    return secret


def main_node(argv: list[str]) -> int:
    p = build_node_parser()
    args = p.parse_args(argv)
    if args.example_config:
        print(EXAMPLE, end="")
        return 0
    if args.config is None:
        p.error("--config is required")
    from anchornode.fees import FeePolicy
    from anchornode.service import NodeService

    try:
        cfg = NodeConfig.load(args.config)
        if args.fee_rate is not None:
            f = cfg.fees
            cfg.fees = FeePolicy(f.min_rate, f.max_rate, args.fee_rate, f.conf_target)
        deployment = Deployment.load(cfg.deployment)
        secret = _bft_secret(cfg.bft_key_file)
        service = NodeService(
            cfg, deployment, secret, _appliance_client(cfg), _rpcs(cfg), open_source(cfg.qc_source)
        )
    except (NodeConfigError, DeploymentError, OSError, ValueError) as exc:
        print(f"bft-anchor node: {exc}", file=sys.stderr)
        return 2
    if cfg.metrics:
        from anchornode.metrics import serve_metrics

        token = (
            cfg.status_token_file.read_text().strip() if cfg.status_token_file else None
        )
        serve_metrics(service.metrics, service.status, *cfg.metrics, status_token=token)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop_event.set())
    service.run()
    return 0


def build_status_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bft-anchor status",
        description="The checkpoint coin, the last checkpoints with who signed and who "
        "missed them, and an alert when the current epoch has none for too long.",
    )
    p.add_argument("--config", type=Path, required=True, help="a node's TOML config")
    p.add_argument("--last", type=int_range(1, 10000), default=10,
                   help="checkpoints to show (default 10)")
    p.add_argument(
        "--alert-blocks",
        type=int_range(1),
        default=50,
        help="alert when the coin's epoch has no checkpoint after this many blocks",
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    return p


def main_status(argv: list[str]) -> int:
    args = build_status_parser().parse_args(argv)
    from anchornode.status import chain_status, format_status
    from bftanchor.epoch import verify_chain

    try:
        cfg = NodeConfig.load(args.config)
        deployment = Deployment.load(cfg.deployment)
    except (NodeConfigError, DeploymentError, OSError, ValueError) as exc:
        print(f"bft-anchor status: {exc}", file=sys.stderr)
        return 2
    # An unreadable QC source is bad input, not "no epoch after 0": without the records
    # the coin's epoch and who missed which checkpoint cannot be judged.
    subject = f"qc_source {cfg.qc_source} (from {args.config})"
    source = open_source(cfg.qc_source)
    if isinstance(source, DirectorySource) and not (source.root / "epochs").is_dir():
        raise InputError(subject, "no epochs/ directory there (is the path right?)")
    try:
        records = {r.epoch: r for r in verify_chain(source.records(), deployment.epoch0)}
    except (OSError, ValueError) as exc:
        raise InputError(subject, f"cannot read the epoch records ({exc})") from None
    errors = []
    for rpc in _rpcs(cfg):
        try:
            st = chain_status(rpc, deployment, records, args.last, args.alert_blocks)
            break
        except (RpcError, OSError, ValueError) as exc:
            errors.append(str(exc))
    else:
        raise InputError("[pow] nodes", "none answered: " + "; ".join(errors))
    print(json.dumps(st.to_json(), indent=1) if args.json else format_status(st))
    return 1 if st.alerts else 0
