"""A small fleet of validators on a real regtest node: the integration tests' world."""

from __future__ import annotations

import copy
import functools
import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embit import bip39
from embit.psbt import PSBT
from embit.transaction import Transaction

from anchorharness.proposal import Proposal, assemble, collect, propose
from anchornode.bftsim import SimulatedBFTChain
from anchornode.pow.regtest import RegtestNode
from anchornode.pow.rpc import to_coin, to_sat
from appliance.journal import Journal
from appliance.policy import Limits
from appliance.signers.base import Signer
from appliance.signers.software import SoftwareSigner
from appliance.signing import Appliance
from bftanchor.bftsig import sign_compact
from bftanchor.deployment import Deployment
from bftanchor.descriptor import KEY_TAIL, EpochMultisig
from bftanchor.epoch import BIP48_SCRIPT_TYPE, SCRIPT_TR, SCRIPT_WSH, EpochRecord
from bftanchor.network import network
from bftanchor.qc import QC, VoteInfo, signed_digest
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


@functools.cache
def _validator_set(
    tag: str, n: int, rounds: int, seed: int
) -> tuple[SimulatedBFTChain, dict[str, SoftwareSigner], dict[int, EpochRecord]]:
    sim = SimulatedBFTChain.create(n, rounds, seed=seed)
    signers = {v.id: SoftwareSigner.from_seed(seed_for(f"{tag}/{v.id}")) for v in sim.validators}
    records = {
        e: sim.make_record(e, {vid: s.pow_key(e) for vid, s in signers.items()}) for e in (0, 1)
    }
    return sim, signers, records


def validator_set(
    tag: str, n: int = 4, rounds: int = 100, seed: int = 0
) -> tuple[SimulatedBFTChain, dict[str, SoftwareSigner], dict[int, EpochRecord]]:
    """n validators with software signers (seeds from `tag`) and the records of epochs 0
    and 1 (P2WSH), epoch 1 certified: derived once per process, since the EC math is the
    slow part; each call gets its own dicts."""
    sim, signers, records = _validator_set(tag, n, rounds, seed)
    return sim, dict(signers), dict(records)


def pay_to(node: Any, multisig: EpochMultisig, value: int) -> Coin:
    """Pay `value` sat from the node's wallet to an epoch's multisig (unconfirmed): a
    genesis coin for a test or a benchmark. The coin's epoch is the multisig's."""
    txid = node.wallet_rpc.sendtoaddress(
        multisig.address(network(node.chain)), float(to_coin(value))
    )
    info = node.rpc.getrawtransaction(txid, True)
    spk = multisig.script_pubkey.data.hex()
    vout = next(o["n"] for o in info["vout"] if o["scriptPubKey"]["hex"] == spk)
    return Coin(Outpoint(txid, vout), to_sat(info["vout"][vout]["value"]), multisig.epoch)


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
        self.genesis = pay_to(node, EpochMultisig(self.records[0]), value)
        node.mine(1)
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

    def mempool_accepted(
        self, qc: QC, fee_rate: float = 2.0
    ) -> tuple[Transaction, Proposal, dict[str, Any]]:
        """The proposal for qc signed by k appliances with none refusing, finalized and
        accepted by the node's mempool (testmempoolaccept: not sent); with the verdict."""
        proposal = self.propose(qc, fee_rate=fee_rate)
        psbt, signed_by, refusals = collect(proposal, self.peers())
        assert len(signed_by) == proposal.source.threshold and not refusals, refusals
        tx = assemble(proposal, psbt)
        accept = self.node.rpc.testmempoolaccept([tx.serialize().hex()])[0]
        assert accept["allowed"], accept
        return tx, proposal, accept

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


# --- the benchmarks' fleet ---------------------------------------------------------------

CHAIN = "litecoin-regtest"
# Large enough that no benchmark ever reaches the end of epoch 0.
ROUNDS_PER_EPOCH = 1_000_000_000
WINDOW = 10  # the deployment's handover_window
FEE_RATE = 2.0  # sat/vB, the devnet's default floor


def mnemonic_for(tag: str, vid: str) -> str:
    entropy = hashlib.sha256(f"bft-anchor bench {tag}/{vid}".encode()).digest()[:16]
    return bip39.mnemonic_from_bytes(entropy)


@dataclass
class BenchFleet:
    n: int
    tag: str
    chain: str = CHAIN
    sim: SimulatedBFTChain = field(init=False)
    mnemonics: dict[str, str] = field(init=False)
    signers: dict[str, SoftwareSigner] = field(init=False)
    record: EpochRecord = field(init=False)
    multisig: EpochMultisig = field(init=False)
    genesis: Coin | None = None
    coin: Coin | None = None
    _round: int = 0
    script: str = SCRIPT_WSH  # or SCRIPT_TR: tr(NUMS, sortedmulti_a), keys on 48h/../3h

    def __post_init__(self) -> None:
        self.sim = SimulatedBFTChain.create(self.n, ROUNDS_PER_EPOCH, seed=len(self.tag))
        self.mnemonics = {v.id: mnemonic_for(self.tag, v.id) for v in self.sim.validators}
        self.signers = {vid: SoftwareSigner.from_mnemonic(m) for vid, m in self.mnemonics.items()}
        st = BIP48_SCRIPT_TYPE[self.script]
        pow_keys = {vid: s.pow_key(0, st) for vid, s in self.signers.items()}
        self.record = self.sim.make_record(0, pow_keys, script=self.script)
        self.multisig = EpochMultisig(self.record)

    @property
    def net(self) -> dict:
        return network(self.chain)

    @property
    def k(self) -> int:
        return self.record.threshold

    # --- the coin ----------------------------------------------------------------

    def fake_genesis(self, value: int = 100_000_000) -> Coin:
        """A made-up coin: enough for appliances, which never look at the PoW chain."""
        txid = hashlib.sha256(f"bench genesis {self.tag}".encode()).hexdigest()
        self.genesis = self.coin = Coin(Outpoint(txid, 0), value, 0)
        return self.genesis

    def fund(self, node: RegtestNode, value: int = 100_000_000) -> str:
        """Pay the epoch's multisig from the node's wallet (unconfirmed); return the txid."""
        self.genesis = self.coin = pay_to(node, self.multisig, value)
        return self.genesis.outpoint.txid

    @property
    def deployment(self) -> Deployment:
        assert self.genesis is not None, "fund() or fake_genesis() first"
        return Deployment(self.chain, MAGIC, self.genesis, self.record, WINDOW)

    # --- appliances and requests -------------------------------------------------------

    def appliance(self, vid: str, journal_path: Path, signer: Signer | None = None) -> Appliance:
        journal = Journal(journal_path, self.deployment.genesis)
        return Appliance(self.deployment, journal, signer or self.signers[vid], Limits())

    def peers(self, directory: Path) -> list[LocalPeer]:
        directory.mkdir(parents=True, exist_ok=True)
        return [
            LocalPeer(vid, self.appliance(vid, directory / f"{vid}.sqlite")) for vid in self.signers
        ]

    def qc(self, round_: int | None = None) -> QC:
        """A QC for the next round, signed by exactly the first k validators."""
        self._round = self._round + 1 if round_ is None else round_
        r = self._round
        seed = hashlib.sha256(f"{self.tag} round {r}".encode()).digest()
        vote = VoteInfo(
            id=hashlib.sha256(b"block" + seed).digest(),
            round=r,
            epoch=0,
            parent_id=hashlib.sha256(b"parent" + seed).digest(),
            parent_round=max(r - 1, 0),
            exec_state_id=hashlib.sha256(b"exec" + seed).digest(),
        )
        commit = hashlib.sha256(b"commit" + seed).digest()
        vih = vote.hash()
        digest = signed_digest(commit, vih)
        sigs = tuple(
            (v.id, sign_compact(v.bft_secret, digest)) for v in self.sim.validators[: self.k]
        )
        return QC(vote, commit, vih, sigs)

    def propose(self, qc: QC, fee_rate: float = FEE_RATE) -> Proposal:
        assert self.coin is not None
        return propose(self.coin, qc, {0: self.record}, False, fee_rate, MAGIC)

    def next_request(self) -> tuple[Proposal, tuple[str, dict, list]]:
        """The next round's proposal and the request every validator is sent."""
        qc = self.qc()
        p = self.propose(qc)
        return p, (p.psbt.to_string(), qc.to_json(), [r.to_json() for r in p.records])

    def advance(self, p: Proposal, txid: str | None = None) -> None:
        """The coin is now output 1 of the proposal's transaction."""
        tx = p.psbt.tx
        self.coin = Coin(Outpoint(txid or p.txid, 1), tx.vout[1].value, p.dest.epoch)

    # --- the PoW node's own wallet as a signer -------------------------------------------

    def wif(self, vid: str) -> str:
        """vid's epoch-0 multisig key (m/48h/1h/0h/2h/0/0) as WIF for this chain."""
        child = self.signers[vid].account(0).derive(list(KEY_TAIL))
        return child.key.wif(self.net)

    def teach_wallet(self, wallet: Any, vid: str) -> None:
        """Give a legacy node wallet vid's key and the multisig so walletprocesspsbt signs."""
        wallet.importprivkey(self.wif(vid), "", False)
        keys = [k.pubkey.sec().hex() for k in self.multisig.keys]  # BIP67 order
        got = wallet.addmultisigaddress(self.k, keys, "", "bech32")
        if got["address"] != self.multisig.address(self.net):
            raise RuntimeError("the node built a different multisig from the same keys")
