"""`bft-anchor doctor`: everything wrong with a validator's set-up, each with its fix.

Run it before the first checkpoint and after every change: on the node's machine with
--node node.toml (deployment, BFT key, PoW nodes and their flags, genesis coin, peers,
QC source, link to the appliance, clocks), on the appliance with --appliance
appliance.toml (deployment installed, device reachable and holding this validator's
key, multisig registered, device able to sign the epoch). Every check runs even when
another failed, so one run lists every problem.

Exit status: 0 nothing wrong, 1 a problem found (each printed with its fix), 2 a config
file that cannot be read at all.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bftanchor.usage import ArgumentParser

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
CLOCK_SKEW_MAX = 60.0  # seconds; peers drop messages 300 s off (peer_protocol.MAX_SKEW)
FUTURE_BLOCK_MAX = 2 * 3600  # consensus: a block's time at most 2 h ahead of the network


@dataclass
class Finding:
    check: str
    status: str  # "ok", "FAIL", "warn"
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail,
                "fix": self.fix}


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def ok(self, check: str, detail: str) -> None:
        self.findings.append(Finding(check, "ok", detail))

    def fail(self, check: str, detail: str, fix: str) -> None:
        self.findings.append(Finding(check, "FAIL", detail, fix))

    def warn(self, check: str, detail: str, fix: str) -> None:
        self.findings.append(Finding(check, "warn", detail, fix))

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "FAIL"]

    def format(self) -> str:
        lines = []
        for f in self.findings:
            lines.append(f"{f.status:<4} {f.check}: {f.detail}")
            if f.fix:
                lines.append(f"     fix: {f.fix}")
        n = len(self.failed)
        lines.append("no problem found" if not n else f"{n} problem(s) found")
        return "\n".join(lines)


class ConfigUnreadable(Exception):
    pass


# --------------------------------------------------------------------------- node side


def _pow_flags_from_process(cookie: Path | None) -> dict[str, str] | None:
    """The PoW daemon's effective flags, when it runs on this machine (pid file by the
    cookie, /proc/<pid>/cmdline, then the conf file); None when they cannot be read."""
    if cookie is None:
        return None
    netdir = Path(cookie).parent
    pids = sorted(netdir.glob("*.pid"))
    if not pids:
        return None
    try:
        pid = int(pids[0].read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, ValueError):
        return None
    flags: dict[str, str] = {}
    datadir = None
    conf = None
    for a in argv[1:]:
        if a.startswith("-datadir="):
            datadir = Path(a.split("=", 1)[1])
        if a.startswith("-conf="):
            conf = Path(a.split("=", 1)[1])
    for base in filter(None, [datadir, netdir.parent, netdir]):
        for name in ("litecoin.conf", "bitcoin.conf"):
            cand = conf if conf is not None and conf.is_absolute() else base / (conf or name)
            if cand.exists():
                for line in cand.read_text(errors="replace").splitlines():
                    line = line.split("#", 1)[0].strip()
                    if "=" in line and not line.startswith("["):
                        k, v = line.split("=", 1)
                        flags[k.strip()] = v.strip()
                break
    for a in argv[1:]:  # the command line wins over the conf file
        if a.startswith("-") and "=" in a:
            k, v = a.lstrip("-").split("=", 1)
            flags[k] = v
        elif a.startswith("-"):
            flags[a.lstrip("-")] = "1"
    return flags


def _check_pow(rep: Report, cfg: Any, deployment: Any) -> None:
    from anchornode.bootstrap import expected_rpc_chain
    from anchornode.pow.rpc import PowRpc, RpcError, to_sat, url_with_auth
    from bftanchor.descriptor import EpochMultisig

    for i, n in enumerate(cfg.pow_nodes):
        name = f"pow node {n.url}"
        if n.cookie is not None:
            try:
                Path(n.cookie).read_text()
            except OSError as exc:
                rep.fail(name, f"cookie file {n.cookie}: {exc.strerror}",
                         "point [pow] nodes' cookie at the node's .cookie (in its datadir, "
                         "e.g. /var/lib/litecoind/.cookie) and let this user read it (the "
                         "node's group, -rpccookieperms=group)")
                continue
        try:
            rpc = PowRpc(url_with_auth(n.url, n.user, n.password, n.cookie), timeout=5.0)
            info = rpc.getblockchaininfo()
            sub = rpc.getnetworkinfo()
        except (RpcError, OSError, ValueError) as exc:
            rep.fail(name, f"unreachable: {exc}",
                     "start the PoW node, and check the URL, port and credentials in [pow]")
            continue
        coin, want = expected_rpc_chain(deployment.chain)
        agent = str(sub.get("subversion", ""))
        is_ltc = "litecoin" in agent.lower()
        if info.get("chain") != want or (coin == "litecoin") != is_ltc:
            rep.fail(name, f"{agent} serves {info.get('chain')}, the deployment is on "
                     f"{deployment.chain}",
                     f"point [pow] at a {coin} node on {want} (or install the right deployment)")
            continue
        rep.ok(name, f"{agent} on {info.get('chain')} at height {info.get('blocks')}")
        if info.get("initialblockdownload"):
            rep.fail(name, "still in initial block download",
                     "wait until the node has synced before the first checkpoint")
        try:
            txindex = rpc.getindexinfo().get("txindex")
        except RpcError:
            txindex = None
        if not txindex:
            rep.fail(name + " -txindex", "the node has no transaction index",
                     "restart it with -txindex=1 (txindex=1 in its conf file); the node and "
                     "the audit look checkpoints up by txid")
        elif not txindex.get("synced"):
            rep.fail(name + " -txindex", "the transaction index is still building",
                     "wait until getindexinfo shows txindex synced")
        else:
            rep.ok(name + " -txindex", "on and synced")
        if is_ltc:
            flags = _pow_flags_from_process(n.cookie)
            if flags is None:
                rep.warn(name + " -mempoolreplacement", "cannot read the node's flags from "
                         "this machine", "make sure it runs with -mempoolreplacement=1")
            elif flags.get("mempoolreplacement", "0") in ("0", ""):
                rep.fail(name + " -mempoolreplacement", "Litecoin Core relays no replacement "
                         "(its default is 0): a stuck checkpoint could never be replaced",
                         "restart it with -mempoolreplacement=1 (mempoolreplacement=1 in "
                         "litecoin.conf)")
            else:
                rep.ok(name + " -mempoolreplacement", "on")
        offset = sub.get("timeoffset", 0) or 0
        if abs(offset) > CLOCK_SKEW_MAX:
            rep.fail(name + " clock", f"its peers' clocks differ from its own by {offset} s",
                     "synchronise the clock (systemd-timesyncd or chrony)")
        try:
            tip = rpc.getblockheader(info["bestblockhash"])
            if tip["time"] > time.time() + FUTURE_BLOCK_MAX:
                rep.fail("clock", f"the chain's tip is {tip['time'] - time.time():.0f} s in "
                         "this machine's future", "synchronise this machine's clock")
        except (RpcError, KeyError):
            pass
        if i == 0:
            g = deployment.genesis.outpoint
            try:
                tx = rpc.getrawtransaction(g.txid, True)
                out = tx["vout"][g.vout]
                ms = EpochMultisig(deployment.epoch0)
                if out["scriptPubKey"]["hex"] != ms.script_pubkey.data.hex():
                    rep.fail("genesis coin", f"{g} does not pay epoch 0's multisig",
                             "the deployment file is inconsistent: ask the coordinator")
                elif to_sat(out["value"]) != deployment.genesis.value:
                    rep.fail("genesis coin", f"{g} holds {to_sat(out['value'])} sat, the "
                             f"deployment says {deployment.genesis.value}",
                             "the deployment file is inconsistent: ask the coordinator")
                else:
                    rep.ok("genesis coin", f"{g} found ({tx.get('confirmations', 0)} confs)")
            except (RpcError, IndexError, KeyError) as exc:
                rep.fail("genesis coin", f"{g} not found on the PoW node: {exc}",
                         "wait for the node to sync, check it runs -txindex=1 and is on the "
                         "deployment's chain")


def _check_peers(rep: Report, cfg: Any, record: Any, secret: bytes | None) -> None:
    from anchornode.peer_protocol import Authenticator, PeerError, exchange, seal

    members = {v.id for v in record.validators}
    configured = {p.id for p in cfg.peers}
    for missing in sorted(members - configured - {cfg.validator_id}):
        rep.fail(f"peer {missing}", "a validator of epoch 0 is not among [[peers]]",
                 f'add [[peers]] id = "{missing}" with its node\'s address')
    for p in cfg.peers:
        name = f"peer {p.id} {p.host}:{p.port}"
        if p.id not in members:
            rep.fail(name, f"{p.id} is not a validator of epoch 0 ({', '.join(sorted(members))})",
                     "fix the peer's id in node.toml to the id in the deployment")
            continue
        if secret is None:
            continue
        try:
            raw = exchange(p.host, p.port, seal("ping", cfg.validator_id, record.epoch, {},
                                                secret), timeout=5.0)
        except (PeerError, OSError) as exc:
            rep.fail(name, f"unreachable: {exc}",
                     "check the address, that its node runs, and the firewall between you")
            continue
        try:
            msg = Authenticator({record.epoch: record}).open(raw)
        except PeerError as exc:
            text = str(exc)
            if "off our clock" in text:
                rep.fail(name + " clock", text, "synchronise both clocks (chrony or "
                         "systemd-timesyncd); peers drop messages 300 s off")
            else:
                rep.fail(name, f"does not speak the protocol as {p.id}: {text}",
                         "check the address points at that validator's bft-anchor node")
            continue
        if msg.sender != p.id:
            rep.fail(name, f"answered as {msg.sender}", "fix the peer's address or id")
        elif msg.type == "error":
            reasons = "; ".join(msg.body.get("reasons", []))
            rep.fail(name, f"refused our ping: {reasons}",
                     "its node does not accept us: compare deployments and BFT keys")
        else:
            skew = time.time() - msg.ts
            if abs(skew) > CLOCK_SKEW_MAX:
                rep.fail(name + " clock", f"its clock is {-skew:+.0f} s from ours",
                         "synchronise both clocks (chrony or systemd-timesyncd)")
            else:
                rep.ok(name, f"speaks the protocol (clock {-skew:+.1f} s)")


def _check_qc_source(rep: Report, cfg: Any, deployment: Any) -> None:
    from anchornode.qcsource import QCSourceError, open_source
    from bftanchor.epoch import verify_chain
    from bftanchor.errors import CheckpointError

    spec = cfg.qc_source
    name = f"qc source {spec}"
    if not spec.startswith(("http://", "https://")):
        root = Path(spec)
        if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
            rep.fail(name, "not a readable directory",
                     "point qc_source at the directory the BFT node publishes into (with qc/ "
                     "and epochs/), readable by this user, or at its http:// URL")
            return
    try:
        src = open_source(spec)
        records = src.records()
        qc = src.latest()
    except (QCSourceError, OSError, ValueError, CheckpointError) as exc:
        rep.fail(name, f"unreadable: {exc}", "check the BFT node serves /epochs and /qc/latest")
        return
    try:
        chain = verify_chain(records, deployment.epoch0)
    except CheckpointError as exc:
        rep.fail(name, f"its epoch records do not verify from the deployment's epoch 0: {exc}",
                 "the source belongs to another deployment, or the deployment file is wrong")
        return
    if qc is None:
        rep.warn(name, f"{len(chain)} epoch record(s), no QC yet",
                 "the BFT node must publish QCs (docs/bft-chain.md) before a checkpoint")
    else:
        rep.ok(name, f"epochs {[r.epoch for r in chain]}, newest QC epoch {qc.epoch} round "
               f"{qc.round}")


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _check_link(rep: Report, cfg: Any) -> None:
    from anchornode.link_client import LinkApplianceClient

    link = cfg.appliance_link
    if link.startswith("inprocess:"):
        rep.warn("link", "the appliance runs in the node's process (development only)",
                 "use a serial link to an offline appliance in production")
        return
    if _port_in_use(*cfg.listen):
        rep.warn("link", "the node is running and holds the link; not probed",
                 "stop the node to check the link, or see its /status")
        return
    try:
        secret = cfg.appliance_secret.read_bytes().strip() if cfg.appliance_secret else None
    except OSError as exc:
        rep.fail("link", f"pairing secret {cfg.appliance_secret}: {exc.strerror}",
                 "copy the pairing secret given to `appliance serve --secret-file` here")
        return
    client = LinkApplianceClient(link, secret=secret, timeout=4.0)
    try:
        st = client.status()
        hello = client.hello or {}
    except Exception as exc:  # a missing port, a timeout, a MAC failure: all "not paired"
        rep.fail("link", f"no answer from the appliance on {link}: {exc or type(exc).__name__}",
                 "start `bft-anchor appliance serve` on the appliance, check the cable and the "
                 "device name, and that both sides use the same pairing secret")
        return
    finally:
        client._drop()
    who = hello.get("appliance_id") or st.get("validator_id")
    if who and who != cfg.validator_id:
        rep.fail("link", f"the appliance on {link} is {who}, not {cfg.validator_id}",
                 "connect this node to its own validator's appliance")
    else:
        rep.ok("link", f"appliance {who or '?'} answers on {link} "
               f"(device {hello.get('device_fingerprint')})")


def check_node(path: Path, rep: Report) -> None:
    from anchornode.config import NodeConfig, NodeConfigError
    from bftanchor.bftsig import pubkey_from_secret
    from bftanchor.deployment import Deployment, DeploymentError

    try:
        cfg = NodeConfig.load(path)
    except NodeConfigError as exc:
        raise ConfigUnreadable(str(exc)) from None
    try:
        deployment = Deployment.load(cfg.deployment)
    except DeploymentError as exc:
        rep.fail("deployment", str(exc),
                 f"copy the deployment file from the coordinator to {cfg.deployment} and check "
                 "it with `bft-anchor deploy show`")
        return
    rep.ok("deployment", f"{deployment.chain}, genesis {deployment.genesis.outpoint}")
    record = deployment.epoch0
    member = next((v for v in record.validators if v.id == cfg.validator_id), None)
    if member is None:
        rep.fail("validator_id", f"{cfg.validator_id!r} is not a validator of epoch 0 "
                 f"({', '.join(v.id for v in record.validators)})",
                 "set validator_id in node.toml to your id in the deployment")
    secret = None
    try:
        secret = bytes.fromhex(cfg.bft_key_file.read_text().strip())
        if len(secret) != 32:
            raise ValueError("not 32 bytes")
    except (OSError, ValueError) as exc:
        rep.fail("bft key", f"{cfg.bft_key_file}: {getattr(exc, 'strerror', None) or exc}",
                 "put the validator's BFT secret key (64 hex) in bft_key_file, readable by "
                 "the node's user only")
        secret = None
    if secret is not None and member is not None:
        if pubkey_from_secret(secret) != member.bft_pubkey:
            rep.fail("bft key", f"{cfg.bft_key_file} is not the key epoch 0 names for "
                     f"{member.id}", "use the BFT key whose public key went into your share")
            secret = None
        else:
            rep.ok("bft key", f"matches {member.id}'s bft_pubkey")
            mode = cfg.bft_key_file.stat().st_mode & 0o077
            if mode:
                rep.fail("bft key permissions", f"{cfg.bft_key_file} is readable by others",
                         f"chmod 600 {cfg.bft_key_file}")
    elif member is None:
        secret = None
    _check_pow(rep, cfg, deployment)
    _check_peers(rep, cfg, record, secret)
    _check_qc_source(rep, cfg, deployment)
    _check_link(rep, cfg)


# --------------------------------------------------------------------------- appliance side


def check_appliance(path: Path, rep: Report) -> None:
    from appliance.config import ApplianceConfig, ConfigError
    from appliance.runtime import make_signer
    from appliance.share import registered_on_device
    from appliance.signers.base import SignerError
    from bftanchor.deployment import Deployment, DeploymentError
    from bftanchor.descriptor import EpochMultisig

    try:
        cfg = ApplianceConfig.load(path)
    except ConfigError as exc:
        raise ConfigUnreadable(str(exc)) from None
    seed_shared = False  # the signer refuses a seed others can read: reported once, here
    if cfg.signer.kind == "software" and cfg.signer.seed_file is not None:
        seed = cfg.signer.seed_file
        if not seed.exists():
            rep.fail("seed", f"{seed} does not exist",
                     "restore the seed from its backup (or use a device: signer.kind = hwi)")
        elif seed.stat().st_mode & 0o077:
            rep.fail("seed permissions", f"{seed} is readable by others", f"chmod 600 {seed}")
            seed_shared = True
    try:
        deployment = Deployment.load(cfg.deployment)
    except DeploymentError as exc:
        rep.fail("deployment", str(exc), "install it: bft-anchor appliance install --config "
                 f"{path} --deployment deployment.json --fingerprint 'XXXX XXXX'")
        return
    record = deployment.epoch0
    rep.ok("deployment", f"{deployment.chain}, genesis {deployment.genesis.outpoint}")
    _check_journal(rep, cfg, deployment)
    member = next((v for v in record.validators if v.id == cfg.validator_id), None)
    if member is None:
        rep.fail("validator_id", f"{cfg.validator_id!r} is not a validator of epoch 0",
                 "set validator_id in appliance.toml to your id in the deployment")
        return
    try:
        signer = make_signer(cfg, record.coin_type, deployment)
        key = signer.pow_key(record.epoch)
    except (SignerError, OSError, ValueError) as exc:
        if seed_shared:
            return
        rep.fail("device", f"not reachable: {exc}",
                 "plug the device in and unlock it; check [signer] device_type/device_path or "
                 "fingerprint in appliance.toml")
        return
    if key != member.pow_key:
        rep.fail("device key", f"the device ({signer.fingerprint.hex()}) holds {key[:20]}..., "
                 f"epoch 0 names {member.pow_key[:20]}... for {member.id}",
                 "connect the device (or seed) this validator's share was made with")
        return
    rep.ok("device key", f"{signer.fingerprint.hex()} holds {member.id}'s epoch 0 key")
    ms = EpochMultisig(record)
    try:
        registered = registered_on_device(signer, ms)
    except (SignerError, OSError) as exc:
        rep.fail("multisig registration", f"cannot ask the device: {exc}",
                 "reconnect the device and run doctor again")
        registered = None
    if registered is False:
        rep.fail("multisig registration", "epoch 0's multisig is not registered on the device",
                 f"bft-anchor appliance install --config {path} --deployment "
                 f"{cfg.deployment} --fingerprint '<as received out of band>'")
    elif registered:
        rep.ok("multisig registration", "epoch 0's multisig is registered on the device")
    _check_capability(rep, signer, record)


def _check_journal(rep: Report, cfg: Any, deployment: Any) -> None:
    """The journal the appliance was initialized with is there and is its own."""
    from appliance.journal import Journal, JournalError

    if cfg.journal_id is None:
        rep.warn("journal", "no journal identity bound in the config (made before `appliance "
                 "init` bound one)", "make a new appliance directory with `bft-anchor "
                 "appliance init`, or keep this journal safe: nothing checks it is the same")
        return
    try:
        Journal(cfg.journal, deployment.genesis, cfg.journal_id).close()
    except (JournalError, OSError) as exc:
        rep.fail("journal", str(exc), "restore the journal this appliance was initialized "
                 "with, or import an export of it (`bft-anchor appliance journal import`); "
                 "never start over with an empty one")
        return
    rep.ok("journal", f"{cfg.journal} is journal {cfg.journal_id}")


def _check_capability(rep: Report, signer: Any, record: Any) -> None:
    from appliance.share import device_info

    try:
        info = device_info(signer)
    except Exception as exc:
        rep.fail("device", f"cannot read its model: {exc}", "reconnect the device")
        return
    if info.get("type") == "software":
        rep.warn("device", "a software seed signs (development only)",
                 "use a hardware wallet (signer.kind = hwi) for a real deployment")
        return
    from appliance.devices.capability import cannot_sign
    from appliance.devices.profiles import match_profile

    profile = match_profile(str(info.get("type")), info.get("model"), info.get("firmware"))
    if profile is None:
        rep.warn("device", f"no firmware profile for {info.get('model')} {info.get('firmware')}",
                 "see firmware-profiles/ for the devices that are known to work")
        return
    reasons = cannot_sign(record, info.get("fingerprint"), profile=profile,
                          firmware=info.get("firmware"))
    if reasons:
        rep.fail("device capability", "; ".join(reasons), "upgrade the firmware, or use a "
                 "device whose profile allows this multisig")
    else:
        rep.ok("device capability", f"{profile.name} {info.get('firmware')} signs "
               f"{record.threshold}-of-{record.n}")


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="bft-anchor doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", type=Path, metavar="NODE_TOML", help="check this node's set-up")
    p.add_argument("--appliance", type=Path, metavar="APPLIANCE_TOML",
                   help="check this appliance's set-up")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.node is None and args.appliance is None:
        print("bft-anchor doctor: give --node NODE_TOML and/or --appliance APPLIANCE_TOML",
              file=sys.stderr)
        return EXIT_USAGE
    rep = Report()
    try:
        if args.appliance is not None:
            check_appliance(args.appliance, rep)
        if args.node is not None:
            check_node(args.node, rep)
    except ConfigUnreadable as exc:
        print(f"bft-anchor doctor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"ok": not rep.failed, "findings": [f.to_json() for f in rep.findings]},
                         indent=1))
    else:
        print(rep.format())
    return EXIT_FAIL if rep.failed else EXIT_OK
