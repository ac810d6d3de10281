"""A validator node's TOML config. Paths are relative to the config file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchornode.fees import FeePolicy
from anchornode.schedule import ScheduleConfig
from bftanchor.tomlfile import path_resolver, read_toml

EXAMPLE = """\
# bft-anchor validator node. Paths are relative to this file.
validator_id = "v0"
# The validator's BFT secret key (hex): it signs every peer message.
bft_key_file = "bft.key"
deployment = "deployment.json"
# Where the BFT node publishes QCs and epoch records: a directory or an http:// URL.
qc_source = "../bft"
# Peer protocol listen address, and the /metrics and /status endpoint. /status is
# answered to loopback clients only, unless status_token_file names a bearer token.
listen = "127.0.0.1:7300"
metrics = "127.0.0.1:9300"
# status_token_file = "status.token"
# Where the node keeps every checkpoint it has seen and its peer replay cache
# (default: this file's directory).
# state_dir = "state"

[appliance]
# The serial link to this validator's appliance (or "inprocess:<appliance.toml>").
link = "/dev/bft-anchor-link"
# secret_file = "link.secret"   # pairing secret, if the appliance was paired

[[peers]]
id = "v1"
address = "127.0.0.1:7301"

[pow]
# Every node the checkpoint is delivered to; one down does not stop the others.
nodes = [{ url = "http://127.0.0.1:19443", cookie = "/var/lib/litecoin/regtest/.cookie" }]

[schedule]
interval_blocks = 2
# The handover window is the deployment file's handover_window, not a node setting.
stuck_after = 2
initiator_timeout = 10.0
poll_interval = 0.5

[fees]
min_rate = 2.0
max_rate = 50.0
# override = 5.0
ladder = 3            # fee levels signed in one round, for replacement without re-signing
ladder_factor = 1.5
# Top the coin up from a single-signature fee wallet (a wallet on the first PoW node)
# when it holds less than topup_below sat; the appliances sign only the coin's input.
# topup_wallet = "fees"
# topup_below = 100000
# topup_amount = 1000000
"""


class NodeConfigError(ValueError):
    pass


# Every key the node reads; any other is refused at start (bftanchor/tomlfile.py).
SCHEMA = {
    "validator_id": None,
    "bft_key_file": None,
    "deployment": None,
    "qc_source": None,
    "listen": None,
    "metrics": None,
    "status_token_file": None,
    "state_dir": None,
    "appliance": {"link": None, "secret_file": None},
    "peers": [{"id": None, "address": None}],
    "pow": {"nodes": [{"url": None, "cookie": None, "user": None, "password": None}]},
    "schedule": {
        "interval_blocks": None,
        "interval_seconds": None,
        "handover_margin": None,  # gone: refused below with the reason
        "stuck_after": None,
        "initiator_timeout": None,
        "poll_interval": None,
    },
    "fees": {
        "min_rate": None,
        "max_rate": None,
        "override": None,
        "ladder": None,
        "ladder_factor": None,
        "topup_wallet": None,
        "topup_below": None,
        "topup_amount": None,
    },
}


@dataclass
class PeerConfig:
    id: str
    host: str
    port: int


@dataclass
class PowNodeConfig:
    url: str
    cookie: Path | None = None
    user: str | None = None
    password: str | None = None


@dataclass
class NodeConfig:
    path: Path
    validator_id: str
    bft_key_file: Path
    deployment: Path
    qc_source: str
    listen: tuple[str, int]
    metrics: tuple[str, int] | None
    appliance_link: str
    appliance_secret: Path | None
    peers: list[PeerConfig]
    pow_nodes: list[PowNodeConfig]
    schedule: ScheduleConfig
    fees: FeePolicy
    ladder: int = 3
    ladder_factor: float = 1.5
    poll_interval: float = 0.5
    topup_wallet: str | None = None
    topup_below: int = 0
    topup_amount: int = 0
    state_dir: Path | None = None  # None: nothing kept on disk (unit tests)
    status_token_file: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        path = Path(path)
        data = read_toml(path, NodeConfigError, "node config", SCHEMA)
        rel = path_resolver(path, NodeConfigError, "node config")

        def addr(value: Any, key: str) -> tuple[str, int]:
            try:
                host, port = str(value).rsplit(":", 1)
                return host, int(port)
            except ValueError:
                raise NodeConfigError(f"node config {path}: {key} must be HOST:PORT") from None

        try:
            qc_source = str(data["qc_source"])
            if not qc_source.startswith(("http://", "https://")):
                qc_source = str(rel(qc_source, "qc_source"))
            app = data.get("appliance", {})
            link = str(app["link"])
            if link.startswith("inprocess:"):
                link = "inprocess:" + str(rel(link.split(":", 1)[1], "appliance.link"))
            peers = []
            for p in data.get("peers", []):
                host, port = addr(p["address"], "peers.address")
                peers.append(PeerConfig(str(p["id"]), host, port))
            pow_nodes = []
            for n in data.get("pow", {}).get("nodes", []):
                n = {"url": n} if isinstance(n, str) else n
                pow_nodes.append(
                    PowNodeConfig(
                        url=str(n["url"]),
                        cookie=rel(n["cookie"], "pow.nodes.cookie") if n.get("cookie") else None,
                        user=n.get("user"),
                        password=n.get("password"),
                    )
                )
            if not pow_nodes:
                raise NodeConfigError(f"node config {path}: [pow] nodes is empty")
            s = data.get("schedule", {})
            if "handover_margin" in s:
                raise NodeConfigError(
                    f"node config {path}: [schedule] handover_margin is gone: the handover "
                    "window is the deployment file's handover_window"
                )
            schedule = ScheduleConfig(
                interval_blocks=int(s.get("interval_blocks", 2)),
                interval_seconds=(
                    float(s["interval_seconds"]) if "interval_seconds" in s else None
                ),
                stuck_after=int(s.get("stuck_after", 2)),
                initiator_timeout=float(s.get("initiator_timeout", 10.0)),
            )
            f = data.get("fees", {})
            fees = FeePolicy(
                min_rate=float(f.get("min_rate", 2.0)),
                max_rate=float(f.get("max_rate", 50.0)),
                override=float(f["override"]) if "override" in f else None,
            )
            return cls(
                path=path,
                validator_id=str(data["validator_id"]),
                bft_key_file=rel(data["bft_key_file"], "bft_key_file"),
                deployment=rel(data["deployment"], "deployment"),
                qc_source=qc_source,
                listen=addr(data.get("listen", "127.0.0.1:7300"), "listen"),
                metrics=addr(data["metrics"], "metrics") if data.get("metrics") else None,
                appliance_link=link,
                appliance_secret=(
                    rel(app["secret_file"], "appliance.secret_file")
                    if app.get("secret_file")
                    else None
                ),
                peers=peers,
                pow_nodes=pow_nodes,
                schedule=schedule,
                fees=fees,
                ladder=max(1, int(f.get("ladder", 3))),
                ladder_factor=float(f.get("ladder_factor", 1.5)),
                poll_interval=float(s.get("poll_interval", 0.5)),
                topup_wallet=f.get("topup_wallet"),
                topup_below=int(f.get("topup_below", 0)),
                topup_amount=int(f.get("topup_amount", 0)),
                state_dir=rel(data["state_dir"], "state_dir") if "state_dir" in data
                else path.resolve().parent,
                status_token_file=rel(data["status_token_file"], "status_token_file")
                if "status_token_file" in data
                else None,
                raw=data,
            )
        except KeyError as exc:
            raise NodeConfigError(f"node config {path}: missing {exc}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, NodeConfigError):
                raise
            raise NodeConfigError(f"node config {path}: {exc}") from exc
