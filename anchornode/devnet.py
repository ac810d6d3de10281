"""The embedded default: a whole local network on one machine.

A regtest PoW node, n validators each with its own appliance (policy, journal,
signer), a simulated BFT chain that signs a real QC every round, and the
checkpoint chain run through E epochs with a handover before each epoch's end.
It ends with the same audit an outsider would run.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embit import bip39
from embit.transaction import Transaction

from anchornode.appliance_client import InProcessAppliance
from anchornode.audit import audit_chain
from anchornode.bftsim import SimulatedBFTChain
from anchornode.bootstrap import (
    check_coin,
    device_caps,
    fund_from_wallet,
    write_deployment,
    write_draft,
)
from anchornode.delivery import CheckpointFailed
from anchornode.fees import FeePolicy
from anchornode.localnet import LocalNet, local_node
from anchornode.pow.regtest import RegtestNode
from anchornode.procutil import spawn_appliance, stop_process
from anchornode.qcsource import MemorySource
from anchornode.schedule import ScheduleConfig
from anchornode.service import NodeService
from appliance.config import EXAMPLE, ApplianceConfig
from appliance.runtime import open_appliance
from appliance.share import make_share
from bftanchor.coinpath import paid_epoch
from bftanchor.deployment import Deployment, load_epochs
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import verify_chain
from bftanchor.network import network
from bftanchor.payload import Payload
from bftanchor.secretfile import write_secret
from bftanchor.share import Draft, KeyShare, build_epoch0
from bftanchor.signreply import SignReply
from bftanchor.tapscript import choose_script
from bftanchor.template import Outpoint

log = logging.getLogger("bft_anchor.devnet")


@dataclass
class DevnetOptions:
    validators: int = 4
    # One size per epoch (e.g. [4, 30, 7]); the last repeats. None: `validators` each epoch.
    sizes: list[int] | None = None
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
    ladder: int = 3  # fee levels each round signs (the node's default)
    resume: bool = False  # continue the devnet kept in datadir for `epochs` more epochs


class LinkAppliance:
    """A validator's appliance as its own process, reached over a pty serial link."""

    def __init__(self, validator_id: str, config: Path, log_dir: Path) -> None:
        from anchornode.link_client import LinkApplianceClient
        from bftanchor.link.pty import open_pty_pair

        self.validator_id = validator_id
        self.master, slave = open_pty_pair()
        self.log = open(log_dir / f"appliance-{validator_id}.log", "ab")  # noqa: SIM115
        self.proc = spawn_appliance(config, slave, self.log)
        self.client = LinkApplianceClient(self.master, timeout=30)

    def sign(self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: Any) -> SignReply:
        return self.client.sign(psbt_b64, qc_json, records_json, lineage)

    def install_record(self, record_json: Any) -> list[str]:
        return self.client.install_record(record_json)

    def close(self) -> None:
        stop_process(self.proc)
        self.master.close()
        self.log.close()


class LocalAppliance(InProcessAppliance):
    """A validator's appliance in this process."""

    def install_record(self, record_json: Any) -> list[str]:
        return self.appliance.install_record(record_json)

    def close(self) -> None:
        pass


# The largest multisig each devnet signer signs, per script (wsh, tapscript): the Jade's
# 520-byte script buffer stops it at 15 keys, and its firmware signs no taproot multisig
# (firmware-profiles/jade.toml).
SIGNER_LIMITS = {"software": (20, 999), "hwi": (15, 0)}


def epoch_plan(opts: DevnetOptions) -> list[tuple[int, str]]:
    """(n, script) of every epoch: the script is chosen when the record is made, from n and
    from what the validators' signers can sign (bftanchor.tapscript.choose_script)."""
    sizes = list(opts.sizes or [opts.validators])
    sizes += [sizes[-1]] * (opts.epochs - len(sizes))
    wsh_max, tr_max = SIGNER_LIMITS[opts.signer]
    return [(n, choose_script(n, wsh_max, tr_max)) for n in sizes[: opts.epochs]]


def _write_validator(vdir: Path, vid: str, mnemonic: str, device_path: str | None) -> Path:
    vdir.mkdir(parents=True, exist_ok=True)
    write_secret(vdir / "seed.txt", mnemonic + "\n")  # never over an existing seed
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


def _point_at_device(cfg: Path, device_path: str | None) -> Path:
    """A resumed validator's config, its emulator now at a new port (nothing else changes)."""
    if device_path is not None:
        text = cfg.read_text()
        text = re.sub(r'(?m)^device_path = ".*"$', f'device_path = "{device_path}"', text)
        tmp = cfg.with_name(cfg.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(cfg)
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
    node.create_wallet("devnet")  # mines the coins the genesis is funded from
    kept: Deployment | None = None
    if opts.resume:
        kept = Deployment.load(root / "deployment.json")
        opts.validators = kept.epoch0.n
        opts.rounds_per_epoch = kept.epoch0.end_round - kept.epoch0.start_round + 1
        opts.handover_margin = kept.handover_window - 1
    else:
        node.mine(101)
    plan = epoch_plan(opts)
    sim = SimulatedBFTChain.create(max(n for n, _ in plan), opts.rounds_per_epoch, opts.seed)

    # Validators: a fresh BIP39 seed each, held by a Jade emulator that HWI drives
    # (or, with signer="software", by the appliance itself). Resuming, each keeps its
    # seed, device state, appliance config and journal.
    configs: dict[str, Path] = {}
    for v in sim.validators:
        vdir = root / "validators" / v.id
        if opts.resume:
            mnemonic = (vdir / "seed.txt").read_text().strip()
        else:
            mnemonic = bip39.mnemonic_from_bytes(secrets.token_bytes(32))
        device_path = None
        if opts.signer == "hwi":
            from appliance.emulator.jade import JadeEmulator

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
        if opts.resume:
            configs[v.id] = _point_at_device(vdir / "appliance.toml", device_path)
        else:
            configs[v.id] = _write_validator(vdir, v.id, mnemonic, device_path)

    # The deployment is made as operators make theirs (docs/operations.md): each appliance
    # writes its key share from its device (`appliance share`), the coordinator drafts
    # epoch 0 from the shares (`deploy draft`) and funds the genesis coin from a wallet of
    # the PoW node (`deploy genesis --wallet`), which is checked on the node before the
    # deployment file is written.
    # Each epoch's size and script come from the plan: its first n validators, their keys
    # on BIP48's path for that script (2h wsh, 3h tapscript).
    def shares(epoch: int) -> list[KeyShare]:
        n, script = plan[min(epoch, len(plan) - 1)]
        return [
            make_share(ApplianceConfig.load(configs[v.id]), chain_name, epoch, v.bft_pubkey,
                       script)
            for v in sim.validators[:n]
        ]

    def next_record(epoch: int) -> Any:
        n, script = plan[min(epoch, len(plan) - 1)]
        keys = {s.validator_id: s.pow_key for s in shares(epoch)}
        return sim.make_record(epoch, keys, script=script, n=n)

    if kept is not None:
        deployment = kept
        rec0 = kept.epoch0
        if [v.bft_pubkey for v in rec0.validators] != [v.bft_pubkey for v in sim.validators]:
            raise CheckpointFailed(f"{root} holds a devnet of other BFT keys: cannot resume it")
        held = verify_chain(load_epochs(root / "epochs.json"), rec0)
        records = {r.epoch: r for r in held}
        sim.records.update(records)
        value = kept.genesis.value
        addr = EpochMultisig(rec0).address(net)
    else:
        shares0 = shares(0)
        script0 = plan[0][1]
        rec0 = build_epoch0(shares0, chain_name, opts.rounds_per_epoch, 0, script0,
                            device_max_n=device_caps(shares0, script0))
        sim.records[0] = rec0
        draft = Draft(chain_name, opts.magic, opts.handover_margin + 1, rec0)
        write_draft(root / "deployment-draft.json", draft)
        ms0 = EpochMultisig(rec0)
        addr = ms0.address(net)
        outpoint = fund_from_wallet(node.rpc, "devnet", addr, ms0.script_pubkey.data.hex(),
                                    opts.genesis_value)
        node.mine(1)
        value = check_coin(node.rpc, outpoint, ms0, opts.genesis_value)["value"]
        deployment = write_deployment(root / "deployment.json", draft, outpoint, value)
        records = {0: rec0}
    genesis = deployment.genesis
    log.info(
        "genesis coin %s (%d sat) locked by epoch 0's %d-of-%d multisig %s",
        genesis.outpoint,
        value,
        rec0.threshold,
        rec0.n,
        addr,
    )

    if opts.appliances == "process":
        appliances: dict[str, Any] = {
            vid: LinkAppliance(vid, cfg, root) for vid, cfg in configs.items()
        }
    else:
        appliances = {
            vid: LocalAppliance(open_appliance(ApplianceConfig.load(cfg)))
            for vid, cfg in configs.items()
        }
    source = MemorySource()
    for e in sorted(records):
        source.publish_record(records[e])
    localnet = LocalNet()
    nodes = {
        v.id: local_node(
            localnet,
            v.id,
            v.bft_secret,
            deployment,
            appliances[v.id],
            [node.rpc],
            source,
            [p.id for p in sim.validators],
            # A round asks every peer on one machine: give large sets the time it takes.
            ScheduleConfig(
                interval_blocks=opts.interval,
                initiator_timeout=max(30.0, 0.6 * len(sim.validators)),
            ),
            opts.fee,
            opts.ladder,
        )
        for v in sim.validators
    }
    try:
        checkpoints: list[dict[str, Any]] = []
        first_epoch, first_round, last_epoch, prior = 0, 0, opts.epochs - 1, []
        if kept is not None:
            # Resuming: the chain goes on from the coin where the last run left it, with
            # rounds above its last checkpoint's, for `epochs` epochs after the coin's.
            before = audit_chain(node.rpc, deployment, [records[e] for e in sorted(records)])
            if not before.ok:
                raise CheckpointFailed(f"the kept chain does not audit: {before.violations}")
            prior = [c.txid for c in before.checkpoints]
            first_epoch = before.coin_epoch or 0
            if before.checkpoints:
                first_round = before.checkpoints[-1].round + 1
            last_epoch = first_epoch + opts.epochs
            say(f"resuming at epoch {first_epoch} round {first_round}: {len(prior)} "
                f"checkpoints kept, coin {before.coin}")
        for epoch in range(first_epoch, last_epoch + 1):
            start, end = sim.epoch_rounds(epoch)
            start = max(start, first_round)
            if epoch + 1 <= last_epoch:
                # The BFT chain certifies the next epoch's record; each operator arms it.
                nxt = records.get(epoch + 1) or next_record(epoch + 1)
                records[epoch + 1] = nxt
                source.publish_record(nxt)
                for vid, a in appliances.items():
                    problems = a.install_record(nxt.to_json())
                    if problems:
                        raise CheckpointFailed(f"{vid} refused epoch {epoch + 1}: {problems}")
            for rnd in range(start, end + 1):
                qc = sim.qc(epoch, rnd)  # the BFT chain commits a block every round
                source.publish_qc(qc)
                # Every validator's node looks: the schedule says whether a checkpoint is
                # due, and the attempt's initiator runs the node's own signing round.
                made = [(vid, n.tick()) for vid, n in nodes.items()]
                block = node.mine(1)[0]  # one PoW block per BFT round
                for vid, txid in made:
                    if txid is None:
                        continue
                    entry = _checkpoint_entry(node, txid, block, vid, nodes[vid])
                    checkpoints.append(entry)
                    say(
                        f"epoch {entry['epoch']} round {entry['round']:>4} txid {txid} "
                        f"height {entry['height']} initiator {vid} fee {entry['fee']}"
                        f"{' HANDOVER -> epoch ' + str(epoch + 1) if entry['handover'] else ''}"
                    )
        (root / "epochs.json").write_text(
            json.dumps([records[e].to_json() for e in sorted(records)], indent=1) + "\n"
        )
        report = audit_chain(node.rpc, deployment, [records[e] for e in sorted(records)])
        # The report lists the chain as the audit found it; the run's own view must agree.
        if [c.txid for c in report.checkpoints] != prior + [c["txid"] for c in checkpoints]:
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
        for n in nodes.values():
            n.shutdown()
        for a in appliances.values():
            a.close()


def _checkpoint_entry(
    pow_node: RegtestNode, txid: str, block: str, initiator: str, service: NodeService
) -> dict[str, Any]:
    info = pow_node.rpc.getrawtransaction(txid, True)
    if info.get("blockhash") != block:
        raise CheckpointFailed(f"checkpoint {txid} not in block {block}")
    tx = Transaction.from_string(info["hex"])
    payload = Payload.from_script(tx.vout[0].script_pubkey.data, service.deployment.magic)
    spent = Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout)
    ladder = service.ladders.get(spent)
    paid = paid_epoch(tx.vout[1].script_pubkey, payload.epoch, service.view.records)
    return {
        "epoch": payload.epoch,
        "round": payload.round,
        "commit_state_id": payload.commit_state_id.hex(),
        "txid": txid,
        "raw_tx": info["hex"],
        "block_hash": block,
        "height": pow_node.rpc.getblockheader(block)["height"],
        "initiator": initiator,
        "handover": paid == payload.epoch + 1,
        "fee": ladder.fees[0] if ladder else None,
    }


def print_progress(line: str) -> None:
    print(line, flush=True)


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
