"""The embedded default: a whole local network on one machine.

A regtest PoW node, n validators each with its own appliance (policy, journal,
signer), a simulated BFT chain that signs a real QC every round, and the
checkpoint chain run through E epochs with a handover before each epoch's end.
It ends with the same audit an outsider would run.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embit import bip39

from anchornode.audit import audit_chain
from anchornode.bftsim import SimulatedBFTChain
from anchornode.fees import FeePolicy
from anchornode.initiator import CheckpointFailed, assemble, collect, deliver, propose
from anchornode.pow.regtest import RegtestNode
from anchornode.pow.rpc import to_coin, to_sat
from anchornode.procutil import die_with_parent
from appliance.config import EXAMPLE, ApplianceConfig
from appliance.runtime import open_appliance
from appliance.signers.software import SoftwareSigner
from appliance.signing import Appliance
from bftanchor.deployment import Deployment
from bftanchor.descriptor import EpochMultisig
from bftanchor.network import network
from bftanchor.template import Coin, Outpoint

log = logging.getLogger("bft_anchor.devnet")


@dataclass
class DevnetOptions:
    validators: int = 4
    epochs: int = 3
    rounds_per_epoch: int = 20
    interval: int = 5
    handover_margin: int = 3  # hand over this many rounds before the end: W = margin + 1
    datadir: Path | None = None
    magic: bytes = b"BFTA"
    genesis_value: int = 100_000_000
    fee: FeePolicy = field(default_factory=FeePolicy)
    seed: int = 0
    appliances: str = "process"  # "process": each over a pty link; "inprocess"
    signer: str = "hwi"  # "hwi": a Jade emulator per validator, driven through HWI


class LinkPeer:
    """A validator whose appliance is its own process, reached over a pty serial link."""

    def __init__(self, validator_id: str, config: Path, log_dir: Path) -> None:
        from anchornode.link_client import LinkApplianceClient
        from bftanchor.link.pty import open_pty_pair

        self.validator_id = validator_id
        self.master, slave = open_pty_pair()
        self.log = open(log_dir / f"appliance-{validator_id}.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "anchorcli",
                "-v",
                "appliance",
                "serve",
                "--config",
                str(config),
                "--link",
                slave,
            ],
            stdout=self.log,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        self.client = LinkApplianceClient(self.master, timeout=30)

    def request_signature(self, psbt_b64: str, qc_json: Any, records_json: Any) -> dict:
        return self.client.sign(psbt_b64, qc_json, records_json, None)

    def install_record(self, record_json: Any) -> list[str]:
        return self.client.install_record(record_json)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.master.close()
        self.log.close()


class LocalPeer:
    """A validator whose appliance runs in this process."""

    def __init__(self, validator_id: str, appliance: Appliance) -> None:
        self.validator_id = validator_id
        self.appliance = appliance

    def request_signature(self, psbt_b64: str, qc_json: Any, records_json: Any) -> dict:
        return self.appliance.handle_sign(psbt_b64, qc_json, records_json).to_json()

    def install_record(self, record_json: Any) -> list[str]:
        return self.appliance.install_record(record_json)


def _write_validator(vdir: Path, vid: str, mnemonic: str, device_path: str | None) -> Path:
    vdir.mkdir(parents=True, exist_ok=True)
    seed = vdir / "seed.txt"
    seed.write_text(mnemonic + "\n")
    seed.chmod(0o600)
    cfg = vdir / "appliance.toml"
    text = EXAMPLE.replace('validator_id = "v0"', f'validator_id = "{vid}"')
    text = text.replace('deployment = "deployment.json"', 'deployment = "../../deployment.json"')
    if device_path is not None:
        text = text.replace('kind = "software"', 'kind = "hwi"')
        text = text.replace(
            'seed_file = "seed.txt"', f'device_type = "jade"\ndevice_path = "{device_path}"'
        )
    cfg.write_text(text)
    return cfg


def run_devnet(opts: DevnetOptions, progress=None) -> dict[str, Any]:
    """Run the whole devnet and return the report DESIGN.md fixes."""
    say = progress or (lambda line: None)
    tmp = None
    if opts.datadir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bft-anchor-devnet-")
        root = Path(tmp.name)
    else:
        root = Path(opts.datadir)
        root.mkdir(parents=True, exist_ok=True)
    node = RegtestNode(datadir=root / "pow")
    emulators: list[Any] = []
    try:
        node.start()
        return _run(opts, root, node, say, emulators)
    finally:
        for emu in emulators:
            emu.stop()
        node.stop()
        if tmp is not None:
            tmp.cleanup()


def _run(
    opts: DevnetOptions, root: Path, node: RegtestNode, say, emulators: list[Any]
) -> dict[str, Any]:
    t0 = time.monotonic()
    chain_name = node.chain
    net = network(chain_name)
    wallet = node.create_wallet("devnet")
    node.mine(101)
    sim = SimulatedBFTChain.create(opts.validators, opts.rounds_per_epoch, opts.seed)

    # Validators: a fresh BIP39 seed each, held by a Jade emulator that HWI drives
    # (or, with signer="software", by the appliance itself).
    configs: dict[str, Path] = {}
    signers: dict[str, Any] = {}
    for v in sim.validators:
        mnemonic = bip39.mnemonic_from_bytes(secrets.token_bytes(32))
        device_path = None
        if opts.signer == "hwi":
            from appliance.emulator.jade import JadeEmulator
            from appliance.signers.hwi import HWISigner

            emu = JadeEmulator(
                port=0,
                mnemonic=mnemonic,
                network="testnet",
                state_path=root / "validators" / v.id / "jade-state.json",
            )
            (root / "validators" / v.id).mkdir(parents=True, exist_ok=True)
            emulators.append(emu)
            emu.start()
            device_path = emu.path
            signers[v.id] = HWISigner(device_type="jade", device_path=device_path)
        else:
            signers[v.id] = SoftwareSigner.from_mnemonic(mnemonic)
        configs[v.id] = _write_validator(root / "validators" / v.id, v.id, mnemonic, device_path)

    def pow_keys(epoch: int) -> dict[str, str]:
        return {vid: s.pow_key(epoch) for vid, s in signers.items()}

    rec0 = sim.make_record(0, pow_keys(0))
    ms0 = EpochMultisig(rec0)
    addr = ms0.address(net)
    gtxid = wallet.sendtoaddress(addr, float(to_coin(opts.genesis_value)))
    gtx = node.rpc.getrawtransaction(gtxid, True)
    vout = next(
        o["n"] for o in gtx["vout"] if o["scriptPubKey"]["hex"] == ms0.script_pubkey.data.hex()
    )
    value = to_sat(gtx["vout"][vout]["value"])
    node.mine(1)
    genesis = Coin(Outpoint(gtxid, vout), value, 0)
    deployment = Deployment(
        chain_name, opts.magic, genesis, rec0, opts.handover_margin + 1
    )
    deployment.save(root / "deployment.json")
    log.info(
        "genesis coin %s (%d sat) locked by epoch 0's %d-of-%d multisig %s",
        genesis.outpoint,
        value,
        rec0.threshold,
        rec0.n,
        addr,
    )

    if opts.appliances == "process":
        peers: list[Any] = [LinkPeer(vid, cfg, root) for vid, cfg in configs.items()]
    else:
        peers = [
            LocalPeer(vid, open_appliance(ApplianceConfig.load(cfg)))
            for vid, cfg in configs.items()
        ]
    try:
        records = {0: rec0}
        coin = genesis
        checkpoints: list[dict[str, Any]] = []
        seq = 0
        n = opts.validators
        for epoch in range(opts.epochs):
            start, end = sim.epoch_rounds(epoch)
            has_next = epoch + 1 < opts.epochs
            if has_next:
                nxt = sim.make_record(epoch + 1, pow_keys(epoch + 1))
                records[epoch + 1] = nxt
                for p in peers:
                    problems = p.install_record(nxt.to_json())
                    if problems:
                        raise CheckpointFailed(
                            f"{p.validator_id} refused epoch {epoch + 1}: {problems}"
                        )
            handover_round = end - opts.handover_margin
            due = list(range(start + opts.interval, handover_round, opts.interval))
            if has_next:
                due.append(handover_round)
            elif not due:
                due.append(start)
            qc = None
            for rnd in range(start, (due[-1] if due else start) + 1):
                qc = sim.qc(epoch, rnd)  # the BFT chain commits a block every round
                if rnd not in due:
                    continue
                handover = has_next and rnd == handover_round
                initiator = peers[(seq + 0) % n]
                rate = opts.fee.rate(node.rpc)
                proposal = propose(coin, qc, records, handover, rate, opts.magic)
                order = [initiator] + [p for p in peers if p is not initiator]
                psbt, signed_by, refusals = collect(proposal, order)
                # Ask the rest too, so every appliance's journal follows the coin.
                for p in order:
                    if p.validator_id not in signed_by and p.validator_id not in refusals:
                        p.request_signature(
                            proposal.psbt.to_string(),
                            qc.to_json(),
                            [r.to_json() for r in proposal.records],
                        )
                if len(signed_by) < proposal.source.threshold:
                    raise CheckpointFailed(
                        f"epoch {epoch} round {rnd}: only {signed_by} signed; refusals: {refusals}"
                    )
                tx = assemble(proposal, psbt)
                deliver(tx, [node.rpc])
                block = node.mine(1)[0]
                info = node.rpc.getrawtransaction(tx.txid().hex(), True)
                if info.get("blockhash") != block:
                    raise CheckpointFailed(f"checkpoint {tx.txid().hex()} not in block {block}")
                height = node.rpc.getblockheader(block)["height"]
                entry = {
                    "epoch": epoch,
                    "round": rnd,
                    "commit_state_id": qc.commit_state_id.hex(),
                    "txid": tx.txid().hex(),
                    "raw_tx": tx.serialize().hex(),
                    "block_hash": block,
                    "height": height,
                    "initiator": initiator.validator_id,
                    "handover": handover,
                }
                checkpoints.append(entry)
                say(
                    f"epoch {epoch} round {rnd:>4} txid {entry['txid']} height {height} "
                    f"initiator {initiator.validator_id} fee {proposal.fee}"
                    f"{' HANDOVER -> epoch ' + str(epoch + 1) if handover else ''}"
                )
                coin = Coin(Outpoint(entry["txid"], 1), tx.vout[1].value, proposal.dest.epoch)
                seq += 1
        (root / "epochs.json").write_text(
            json.dumps([records[e].to_json() for e in sorted(records)], indent=1) + "\n"
        )
        report = audit_chain(node.rpc, deployment, [records[e] for e in sorted(records)])
        # The report lists the chain as the audit found it; the run's own view must agree.
        if [c.txid for c in report.checkpoints] != [c["txid"] for c in checkpoints]:
            report.violations.append("the chain's checkpoints differ from those the devnet made")
        log.info(
            "devnet done in %.1f s: %d checkpoints, audit %s",
            time.monotonic() - t0,
            len(checkpoints),
            "OK" if report.ok else "FAILED",
        )
        by_txid = {c["txid"]: c for c in checkpoints}
        return {
            "chain": chain_name,
            "magic": opts.magic.hex(),
            "genesis": {"txid": genesis.outpoint.txid, "vout": genesis.outpoint.vout},
            "epochs": [records[e].to_json() for e in sorted(records)],
            "checkpoints": [
                dict(c.to_json(), initiator=by_txid.get(c.txid, {}).get("initiator"))
                for c in report.checkpoints
            ],
            "audit": {"ok": report.ok, "violations": report.violations + report.missing},
        }
    finally:
        for p in peers:
            if isinstance(p, LinkPeer):
                p.close()


def print_progress(line: str) -> None:
    print(line, flush=True)


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
