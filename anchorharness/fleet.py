"""A small fleet of validators on a real regtest node: the integration tests' world."""

from __future__ import annotations

import copy
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embit.psbt import PSBT
from embit.transaction import Transaction

from anchorharness.proposal import Proposal, assemble, collect, propose
from anchornode.bftsim import SimulatedBFTChain
from anchornode.pow.rpc import to_coin, to_sat
from appliance.journal import Journal
from appliance.policy import Limits
from appliance.signers.software import SoftwareSigner
from appliance.signing import Appliance
from bftanchor.bftsig import sign_compact
from bftanchor.deployment import Deployment
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import BIP48_SCRIPT_TYPE, SCRIPT_TR, SCRIPT_WSH
from bftanchor.network import network
from bftanchor.qc import QC
from bftanchor.template import (
    Coin,
    Outpoint,
    finalize,
    put_signature,
    signatures,
    verify_partial_sig,
)

MAGIC = b"BFTA"
# The scripts of epochs 0 and 1 that the policy and lineage tests run against.
SCRIPT_PAIRS = [(SCRIPT_WSH, SCRIPT_WSH), (SCRIPT_TR, SCRIPT_TR)]
SCRIPT_IDS = ["wsh", "tr"]


def seed_for(name: str) -> bytes:
    return hashlib.sha256(f"bft-anchor tests {name}".encode()).digest()


@dataclass
class LocalPeer:
    """A validator whose appliance runs in this process."""

    validator_id: str
    appliance: Appliance

    def request_signature(self, psbt_b64: str, qc_json: Any, records_json: Any) -> dict:
        return self.appliance.handle_sign(psbt_b64, qc_json, records_json).to_json()


class Fleet:
    """n validators with software signers, epoch 0 and a certified epoch 1, a funded coin."""

    def __init__(
        self,
        node,
        tmp: Path,
        n: int = 4,
        rounds: int = 100,
        limits: Limits | None = None,
        value: int = 10_000_000,
        tag: str = "",
        window: int = 10,
        scripts: tuple[str, str] = (SCRIPT_WSH, SCRIPT_WSH),
    ) -> None:
        self.node = node
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.net = network(node.chain)
        self.sim = SimulatedBFTChain.create(n, rounds, seed=len(tag))
        self.signers = {
            v.id: SoftwareSigner.from_seed(seed_for(f"{tag}/{v.id}")) for v in self.sim.validators
        }
        self.scripts = scripts  # epoch 0's and epoch 1's
        self.records = {
            e: self.sim.make_record(e, self.pow_keys(e), script=scripts[e]) for e in (0, 1)
        }
        ms0 = EpochMultisig(self.records[0])
        wallet = node.wallet_rpc
        txid = wallet.sendtoaddress(ms0.address(self.net), float(to_coin(value)))
        info = node.rpc.getrawtransaction(txid, True)
        vout = next(
            o["n"] for o in info["vout"] if o["scriptPubKey"]["hex"] == ms0.script_pubkey.data.hex()
        )
        node.mine(1)
        self.genesis = Coin(Outpoint(txid, vout), to_sat(info["vout"][vout]["value"]), 0)
        self.coin = self.genesis
        self.deployment = Deployment(node.chain, MAGIC, self.genesis, self.records[0], window)
        self.limits = limits or Limits()
        self.appliances = {vid: self.open_appliance(vid) for vid in self.signers}

    def pow_keys(self, epoch: int) -> dict[str, str]:
        st = BIP48_SCRIPT_TYPE[self.scripts[epoch]]
        return {vid: s.pow_key(epoch, st) for vid, s in self.signers.items()}

    def open_appliance(self, vid: str) -> Appliance:
        journal = Journal(self.tmp / f"{vid}.sqlite", self.genesis)
        return Appliance(self.deployment, journal, self.signers[vid], self.limits)

    def qc(self, round: int, epoch: int = 0) -> QC:
        return self.sim.qc(epoch, round)

    def propose(self, qc: QC, handover: bool = False, fee_rate: float = 2.0) -> Proposal:
        return propose(self.coin, qc, self.records, handover, fee_rate, MAGIC)

    def request(self, psbt: PSBT | str, qc: QC, records=None) -> tuple[str, dict, list]:
        b64 = psbt if isinstance(psbt, str) else psbt.to_string()
        recs = records if records is not None else [r.to_json() for r in self.records.values()]
        return b64, qc.to_json(), recs

    def peers(self) -> list[LocalPeer]:
        return [LocalPeer(vid, a) for vid, a in self.appliances.items()]

    def signed(
        self, qc: QC, handover: bool = False, only: list[str] | None = None
    ) -> tuple[Transaction, Proposal]:
        """The appliances' round without the broadcast: k signatures, finalized. Every
        appliance is asked (so every journal follows the coin) unless `only` names who."""
        proposal = self.propose(qc, handover)
        peers = [p for p in self.peers() if only is None or p.validator_id in only]
        psbt, signed_by, refusals = collect(proposal, peers)
        assert len(signed_by) >= proposal.source.threshold, refusals
        for peer in peers:
            if peer.validator_id not in signed_by:
                peer.request_signature(*self.request(proposal.psbt, qc))
        return assemble(proposal, psbt), proposal

    def forged(self, qc: QC, sequence: int, handover: bool = False) -> Transaction:
        """A checkpoint the validators' keys sign directly, bypassing the appliances'
        policy: the chains an audit must judge (here with another nSequence on the coin)."""
        proposal = self.propose(qc, handover)
        psbt = proposal.psbt
        psbt.inputs[0].sequence = sequence
        for vid in list(self.signers)[: proposal.source.threshold]:
            signed = self.signers[vid].sign(psbt, proposal.source)
            for pub, sig in signatures(signed, 0, proposal.source).items():
                put_signature(psbt, 0, proposal.source, pub, sig)
        return finalize(psbt, proposal.source)

    def advance(self, tx: Transaction) -> None:
        """Follow the coin to tx's output 1."""
        epoch = self.coin.epoch + (tx.vout[1].script_pubkey != self.script(self.coin.epoch))
        self.coin = Coin(Outpoint(tx.txid().hex(), 1), tx.vout[1].value, epoch)

    def script(self, epoch: int):
        return EpochMultisig(self.records[epoch]).script_pubkey

    def checkpoint(
        self, qc: QC, handover: bool = False, mine: bool = True, only: list[str] | None = None
    ) -> str:
        """A full round: k signatures, finalize, send, confirm."""
        tx, proposal = self.signed(qc, handover, only)
        txid = self.node.rpc.sendrawtransaction(tx.serialize().hex())
        if mine:
            self.node.mine(1)
        self.coin = Coin(Outpoint(txid, 1), tx.vout[1].value, proposal.dest.epoch)
        return txid


def twin_qc(fleet: Fleet, qc: QC, commit_state_id: str | None = None) -> QC:
    """Another commit for the same (epoch, round), signed by the whole validator set: what
    an equivocating BFT chain (or a forger holding the keys) would present."""
    data = copy.deepcopy(qc.to_json())
    data["ledger_commit_info"]["commit_state_id"] = commit_state_id or secrets.token_hex(32)
    digest = QC.from_json(data).signed_digest()
    data["signatures"] = {
        v.id: sign_compact(v.bft_secret, digest).hex() for v in fleet.sim.validators
    }
    return QC.from_json(data)


def v0_signature(fleet: Fleet, psbt_b64: str) -> bytes:
    """v0's signature in a signed PSBT (the only one), after checking it against the sighash."""
    psbt = PSBT.from_string(psbt_b64)
    source = EpochMultisig(fleet.records[0])
    pub = source.key_for("v0").pubkey
    assert set(signatures(psbt, 0, source)) == {pub}
    sig = signatures(psbt, 0, source)[pub]
    verify_partial_sig(psbt, 0, source, pub, sig)
    return sig
