"""n validators with software signers, epoch records, appliances and a coin to spend.

The same set-up as the integration tests' Fleet (tests/helpers.py), rebuilt here so
the benchmarks do not import from tests/. The coin is either funded on a regtest
node (when the transaction must be accepted by a real node) or made up in-process
(when only the appliances see it: they check lineage, not the PoW chain).
QCs are signed by exactly k validators so every sample costs the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embit import bip39

from anchorharness.proposal import Proposal, propose
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
from bftanchor.epoch import BIP48_SCRIPT_TYPE, SCRIPT_WSH, EpochRecord
from bftanchor.network import network
from bftanchor.qc import QC, VoteInfo, signed_digest
from bftanchor.template import Coin, Outpoint

MAGIC = b"BFTA"
CHAIN = "litecoin-regtest"
# Large enough that no benchmark ever reaches the end of epoch 0.
ROUNDS_PER_EPOCH = 1_000_000_000
WINDOW = 10  # the deployment's handover_window
FEE_RATE = 2.0  # sat/vB, the devnet's default floor


def mnemonic_for(tag: str, vid: str) -> str:
    entropy = hashlib.sha256(f"bft-anchor bench {tag}/{vid}".encode()).digest()[:16]
    return bip39.mnemonic_from_bytes(entropy)


@dataclass
class LocalPeer:
    """A validator whose appliance runs in this process (as in the devnet)."""

    validator_id: str
    appliance: Appliance

    def request_signature(self, psbt_b64: str, qc_json: Any, records_json: Any) -> dict:
        return self.appliance.handle_sign(psbt_b64, qc_json, records_json).to_json()


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
        assert node.wallet_rpc is not None
        addr = self.multisig.address(self.net)
        txid = node.wallet_rpc.sendtoaddress(addr, float(to_coin(value)))
        info = node.rpc.getrawtransaction(txid, True)
        spk = self.multisig.script_pubkey.data.hex()
        vout = next(o["n"] for o in info["vout"] if o["scriptPubKey"]["hex"] == spk)
        value = to_sat(info["vout"][vout]["value"])
        self.genesis = self.coin = Coin(Outpoint(txid, vout), value, 0)
        return txid

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
