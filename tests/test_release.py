"""The release rule, offline: an appliance bound to payload P on a coin signs another
payload only on proof that P can never complete (n - k + 1 validators of the coin's
epoch signed other payloads on it), and journals that proof with the signature.

Four validators, k = 3: two signatures on other payloads are the proof. Real
appliances (policy, SQLite journal, software signer), no PoW node.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from embit.ec import PrivateKey
from embit.psbt import PSBT

from anchorharness.fleet import validator_set
from anchorharness.proposal import Proposal, propose
from appliance.interchange import InterchangeError, export_journal, import_journal
from appliance.journal import Journal
from appliance.policy import Limits
from appliance.signing import Appliance
from bftanchor.deployment import Deployment
from bftanchor.descriptor import multisig_for
from bftanchor.template import Coin, Outpoint, get_signature, partial_checkpoint, sighash

MAGIC = b"BFTA"
GENESIS = Coin(Outpoint("cd" * 32, 0), 5_000_000, 0)


class World:
    def __init__(self, tmp: Path) -> None:
        self.sim, self.signers, self.records = validator_set("release", seed=11)
        self.deployment = Deployment("litecoin-regtest", MAGIC, GENESIS, self.records[0], 5)
        self.apps = {
            vid: Appliance(self.deployment, Journal(tmp / f"{vid}.sqlite", GENESIS), s, Limits())
            for vid, s in self.signers.items()
        }
        self.ms = multisig_for(self.records[0])
        self.pub = {k.validator_id: k.pubkey for k in self.ms.keys}

    def proposal(self, round: int, coin: Coin = GENESIS) -> Proposal:
        return propose(coin, self.sim.qc(0, round), self.records, False, 2.0, MAGIC)

    def sign(self, vid: str, prop: Proposal, lineage: list[str] | None = None):
        return self.apps[vid].handle_sign(*prop.request(), lineage)

    def evidence(self, vid: str, prop: Proposal) -> str:
        """vid's appliance signs prop; its signature alone, as a lineage transaction."""
        out = self.sign(vid, prop)
        assert out.signed, out.reasons
        psbt = PSBT.from_string(out.psbt)
        sig = get_signature(psbt, 0, self.ms, self.pub[vid])
        return partial_checkpoint(psbt, self.ms, {self.pub[vid]: sig}).serialize().hex()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def released_rows(w: World, vid: str) -> list[tuple[str, str, dict]]:
    with sqlite3.connect(w.apps[vid].journal.path) as db:
        rows = db.execute("SELECT input, payload, evidence FROM released").fetchall()
    return [(i, p, json.loads(e)) for i, p, e in rows]


def test_n_minus_k_plus_one_signers_on_other_payloads_release_a_bound_payload(world):
    w = world
    p, q = w.proposal(10), w.proposal(30)
    assert w.sign("v1", p).signed and w.sign("v2", p).signed  # v1, v2 bound to P
    ev0, ev3 = w.evidence("v0", q), w.evidence("v3", q)  # v0, v3 bound to Q

    # Without evidence, and with n - k = 1 signer on Q: the per-coin rule stands.
    for lineage in (None, [], [ev0], [ev0, ev0], [ev3]):
        out = w.sign("v1", q, lineage)
        assert not out.signed and any("another payload" in r for r in out.reasons), lineage
    assert released_rows(w, "v1") == []

    # n - k + 1 = 2 distinct validators signed Q: P can get at most 2 < k signatures.
    out = w.sign("v1", q, [ev0, ev3])
    assert out.signed, out.reasons
    ((inp, payload, evidence),) = released_rows(w, "v1")
    assert inp == str(GENESIS.outpoint)
    assert payload == w.apps["v1"].journal.state().signed[0].payload  # P released
    assert evidence["signers"] == sorted(w.pub[v].sec().hex() for v in ("v0", "v3"))
    assert evidence["txids"] == [q.txid]
    signed = [d for d in w.apps["v1"].journal.decisions() if d["decision"] == "signed"]
    assert signed[0]["detail"]["released"][0]["signers"] == evidence["signers"]
    # The release lets Q through, nothing else: a third payload is still refused.
    r = w.proposal(50)
    out = w.sign("v1", r, [ev0, ev3])
    assert not out.signed and any("another payload" in x for x in out.reasons)


def test_forged_duplicate_other_coin_other_epoch_and_same_payload_evidence_do_not_count(world):
    w = world
    p, q = w.proposal(10), w.proposal(30)
    assert w.sign("v1", p).signed
    ev0 = w.evidence("v0", q)

    # Same payload as the bound one: v2 signing P proves nothing against P.
    ev2_same = w.evidence("v2", p)
    # Forged: v3's slot filled with v0's signature / a signature by a key outside the set.
    psbt = q.psbt
    v0sig = get_signature(PSBT.from_string(w.apps["v0"].journal.state().signed[0].signed_psbt),
                          0, w.ms, w.pub["v0"])
    forged = partial_checkpoint(psbt, w.ms, {w.pub["v3"]: v0sig}).serialize().hex()
    stranger = PrivateKey(b"\x07" * 32).sign(sighash(psbt, 0, w.ms)).serialize() + b"\x01"
    forged_key = partial_checkpoint(psbt, w.ms, {w.pub["v3"]: stranger}).serialize().hex()
    # Another coin: v3 signs a payload on a coin v1 never signed on.
    other = Coin(Outpoint("ef" * 32, 0), 5_000_000, 0)
    oc = w.proposal(30, other)
    oc_signed = w.signers["v3"].sign(PSBT.parse(oc.psbt.serialize()), w.ms)
    ev3_other_coin = partial_checkpoint(
        oc_signed, w.ms, {w.pub["v3"]: get_signature(oc_signed, 0, w.ms, w.pub["v3"])}
    ).serialize().hex()
    # Another epoch: v3's epoch 1 key signing a spend of this very coin.
    ms1 = multisig_for(w.records[1])
    as1 = propose(Coin(GENESIS.outpoint, GENESIS.value, 1), w.sim.qc(1, 130), w.records,
                  False, 2.0, MAGIC)
    signed1 = w.signers["v3"].sign(PSBT.parse(as1.psbt.serialize()), ms1)
    pub1 = {k.validator_id: k.pubkey for k in ms1.keys}["v3"]
    ev3_epoch1 = partial_checkpoint(
        signed1, ms1, {pub1: get_signature(signed1, 0, ms1, pub1)}
    ).serialize().hex()

    for lineage in ([ev0, ev2_same], [ev0, forged], [ev0, forged_key], [ev0, ev3_other_coin],
                    [ev0, ev3_epoch1], [ev0, ev0, "zz", 5]):
        out = w.sign("v1", q, lineage)
        assert not out.signed and any("another payload" in r for r in out.reasons), lineage
    assert released_rows(w, "v1") == []


def test_the_trigger_refuses_a_second_payload_unless_it_is_released(world):
    """Below the Python: a row for another payload on a coin is refused by SQLite unless
    the bound payload has a released row, and released rows cannot be deleted."""
    w = world
    p, q = w.proposal(10), w.proposal(30)
    assert w.sign("v1", p).signed
    db = sqlite3.connect(w.apps["v1"].journal.path, isolation_level=None)
    row = db.execute("SELECT payload FROM signed").fetchone()

    def insert(txid: str, payload: str) -> None:
        db.execute(
            "INSERT INTO signed (txid, epoch, round, payload, input, input_value, coin_value, "
            "dest_epoch, fee, handover, request_hash, created_at) "
            "VALUES (?, 0, 30, ?, ?, 1, 1, 0, 1, 0, 'x', 0)",
            (txid, payload, str(GENESIS.outpoint)),
        )

    with pytest.raises(sqlite3.IntegrityError, match="per-coin"):
        insert("11" * 32, "ab")
    db.execute("INSERT INTO released (input, payload, evidence, created_at) VALUES (?,?,?,0)",
               (str(GENESIS.outpoint), row[0], "{}"))
    insert("11" * 32, "ab")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM released")
    db.close()
    del q


def test_a_quorum_signed_payload_is_never_released(world):
    """P seen with k signatures (adopted from the lineage) stays; evidence cannot undo it."""
    w = world
    p, q = w.proposal(10), w.proposal(30)
    signed = [PSBT.from_string(w.sign(v, p).psbt) for v in ("v1", "v2")]
    ev0, ev3 = w.evidence("v0", q), w.evidence("v3", q)
    # A faulty v3 signs P too: P is quorum-signed (v1, v2, v3).
    v3p = w.signers["v3"].sign(PSBT.parse(p.psbt.serialize()), w.ms)
    sigs = {w.pub[v]: get_signature(s, 0, w.ms, w.pub[v]) for v, s in
            (("v1", signed[0]), ("v2", signed[1]), ("v3", v3p))}
    full = partial_checkpoint(p.psbt, w.ms, sigs).serialize().hex()
    out = w.sign("v1", q, [full, ev0, ev3])
    assert not out.signed, "a quorum-signed payload must not be released"


def test_evidence_is_looked_for_only_on_coins_with_an_own_unsettled_payload(world, monkeypatch):
    """Every sign request carries the node's lineage (up to 32 checkpoints, most of them
    signed by this appliance too). Their signatures are checked as release evidence
    only where an own payload on the coin is not settled; at n = 100 that check is 67
    Schnorr verifications per lineage transaction, per request."""
    from appliance import lineage

    w = world
    p = w.proposal(10)
    signed = {v: PSBT.from_string(w.sign(v, p).psbt) for v in ("v1", "v2", "v3")}
    full = partial_checkpoint(
        p.psbt, w.ms, {w.pub[v]: get_signature(s, 0, w.ms, w.pub[v]) for v, s in signed.items()}
    ).serialize().hex()
    checked: list[str] = []
    real = lineage.quorum_signers

    def counting(tx, *a, **k):
        checked.append(tx.txid().hex())
        return real(tx, *a, **k)

    monkeypatch.setattr(lineage, "quorum_signers", counting)
    state = w.apps["v1"].journal.state()
    # v1's payload on the genesis coin is its own, not yet seen quorum-signed: looked at.
    assert lineage.releases([full], state, w.records, MAGIC) == []
    assert checked == [p.txid]
    # Once the checkpoint is proven (adopted with the next signature), it is not.
    checked.clear()
    settled = state.with_adopted(lineage.verify_lineage([full], state, w.records, MAGIC)[0])
    assert settled.is_proven(settled.by_txid(p.txid))
    checked.clear()
    assert lineage.releases([full], settled, w.records, MAGIC) == []
    assert checked == []


def test_a_journal_with_a_release_moves_by_export_and_import(world, tmp_path):
    """Both own payloads on the coin and the release that allowed the second travel
    together; a release no own signature used is refused (import only forbids more)."""
    w = world
    p, q = w.proposal(10), w.proposal(30)
    assert w.sign("v1", p).signed
    ev0, ev3 = w.evidence("v0", q), w.evidence("v3", q)
    assert w.sign("v1", q, [ev0, ev3]).signed
    data = export_journal(w.apps["v1"].journal)
    assert len(data["released"]) == 1
    fresh = Journal(tmp_path / "moved.sqlite", GENESIS)
    assert import_journal(fresh, data, w.records[0])["added"] == 2
    assert fresh.released_rows() == data["released"]
    bad = dict(data, checkpoints=data["checkpoints"][:1])
    with pytest.raises(InterchangeError, match="no own signature used"):
        import_journal(Journal(tmp_path / "other.sqlite", GENESIS), bad, w.records[0])
