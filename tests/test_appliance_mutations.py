"""Issue 10: a property-based attack on the appliance's decision.

Hypothesis builds a valid sign request for a coin the appliance expects, then mutates it
field by field (every PSBT field, every output, the QC, the records, the lineage). The
appliance must either sign exactly the checkpoint it would build itself for that QC and
coin, or refuse with a reason; it never raises, and across all the requests it is shown
(one journal for the whole run) it never signs two different checkpoints on one outpoint.
"""

from __future__ import annotations

import copy
import secrets

import pytest
from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput
from helpers import MAGIC, seed_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchorharness.proposal import propose
from anchornode.bftsim import SimulatedBFTChain
from appliance.journal import Journal
from appliance.policy import Limits
from appliance.signers.software import SoftwareSigner
from appliance.signing import Appliance
from bftanchor.deployment import Deployment
from bftanchor.descriptor import multisig_for
from bftanchor.epoch import BIP48_SCRIPT_TYPE, SCRIPT_TR, SCRIPT_WSH
from bftanchor.payload import Payload
from bftanchor.qc import QC
from bftanchor.template import Coin, Outpoint, build_checkpoint_tx

GENESIS = Coin(Outpoint("cd" * 32, 0), 5_000_000, 0)
WINDOW = 10


class World:
    def __init__(self, tmp, script: str = SCRIPT_WSH) -> None:
        self.sim = SimulatedBFTChain.create(4, 1000, seed=7)
        signers = {v.id: SoftwareSigner.from_seed(seed_for(f"mut/{v.id}"))
                   for v in self.sim.validators}
        st_ = BIP48_SCRIPT_TYPE[script]
        self.records = {
            e: self.sim.make_record(e, {v: s.pow_key(e, st_) for v, s in signers.items()},
                                    script=script)
            for e in (0, 1)
        }
        dep = Deployment("litecoin-regtest", MAGIC, GENESIS, self.records[0], WINDOW)
        self.journal = Journal(tmp / "j.sqlite", GENESIS)
        self.app = Appliance(dep, self.journal, signers["v0"], Limits())
        self.qcs: dict[int, QC] = {}

    def qc(self, rnd: int) -> QC:
        # One commit per round (an honest BFT chain), so twins come only from mutations.
        if rnd not in self.qcs:
            self.qcs[rnd] = self.sim.qc(0, rnd)
        return self.qcs[rnd]


def _rand_tx() -> Transaction:
    return Transaction(2, [TransactionInput(secrets.token_bytes(32), 0)],
                       [TransactionOutput(50_000, Script(b"\x00\x14" + secrets.token_bytes(20)))],
                       0)


def mutate(kind: str, n: int, psbt: PSBT, qc: dict, recs: list, lineage: list, w: World):
    """Apply mutation `kind` with parameter n (drawn) to the request's parts in place."""
    i0, o = psbt.inputs[0], psbt.outputs
    if kind == "tx_version":
        psbt.tx_version = n % 2**32
    elif kind == "locktime":
        psbt.locktime = n % 2**32
    elif kind == "sequence":
        i0.sequence = n % 2**32
    elif kind == "input_txid":
        i0.txid = secrets.token_bytes(32)
    elif kind == "input_vout":
        i0.vout = n % 5
    elif kind == "utxo_value":
        i0.witness_utxo.value += n - 500
    elif kind == "utxo_script":
        i0.witness_utxo.script_pubkey = Script(b"\x00\x20" + secrets.token_bytes(32))
    elif kind == "witness_script":
        i0.witness_script = Script(secrets.token_bytes(n % 80))
    elif kind == "derivations":
        i0.bip32_derivations = {}
    elif kind == "sighash":
        i0.sighash_type = n % 256
    elif kind == "non_witness_utxo":
        i0.non_witness_utxo = _rand_tx()
    elif kind == "topup":
        prev = _rand_tx()
        psbt.inputs.append(type(i0)(vin=TransactionInput(prev.txid(), 0, sequence=0xFFFFFFFD)))
        psbt.inputs[-1].witness_utxo = TransactionOutput(prev.vout[0].value + n,
                                                        prev.vout[0].script_pubkey)
        if n % 2:
            psbt.inputs[-1].non_witness_utxo = prev
        if n % 3 == 0:
            o.append(type(o[0])(vout=TransactionOutput(prev.vout[0].value + n,
                                                       prev.vout[0].script_pubkey)))
    elif kind == "out_value":
        o[n % len(o)].value = (o[n % len(o)].value + n * 997) % 6_000_000
    elif kind == "out_script":
        o[n % len(o)].script_pubkey = Script(secrets.token_bytes(n % 40))
    elif kind == "out_handover":
        o[1].script_pubkey = multisig_for(w.records[1]).script_pubkey
    elif kind == "out_add":
        o.append(type(o[0])(vout=TransactionOutput(n, Script(b"\x00\x14" + b"\x07" * 20))))
    elif kind == "out_drop":
        del o[n % len(o)]
    elif kind == "payload_byte":
        data = bytearray(o[0].script_pubkey.data)
        data[n % len(data)] ^= 1 + n % 255
        o[0].script_pubkey = Script(bytes(data))
    elif kind == "qc_round":
        qc["vote_info"]["round"] = n % 300
    elif kind == "qc_epoch":
        qc["vote_info"]["epoch"] = n % 3
    elif kind == "qc_commit":
        qc["ledger_commit_info"]["commit_state_id"] = secrets.token_hex(32)
    elif kind == "qc_sigs":
        sigs = qc["signatures"]
        for k in list(sigs)[: 1 + n % len(sigs)]:
            del sigs[k]
    elif kind == "qc_sig_garble":
        k = sorted(qc["signatures"])[n % len(qc["signatures"])]
        qc["signatures"][k] = secrets.token_hex(64)
    elif kind == "records_drop":
        recs[:] = recs[:1]
    elif kind == "records_alter":
        recs[-1] = copy.deepcopy(recs[-1]) | {"end_round": recs[-1]["end_round"] + 1 + n % 9}
    elif kind == "records_garbage":
        recs.append({"epoch": "x"} if n % 2 else [n])
    elif kind == "lineage_junk":
        lineage.extend(["zz", _rand_tx().serialize().hex(), n])
    # Tapscript (BIP371) fields: another leaf, internal key, merkle root or key origins.
    elif kind == "tap_leaf":
        for cb in list(i0.taproot_scripts):
            i0.taproot_scripts[cb] = secrets.token_bytes(1 + n % 60) + b"\xc0"
    elif kind == "tap_control":
        i0.taproot_scripts = {bytes([0xC0 | n % 2]) + secrets.token_bytes(32): v
                              for v in i0.taproot_scripts.values()}
    elif kind == "tap_internal":
        from embit.ec import PrivateKey

        i0.taproot_internal_key = PrivateKey(secrets.token_bytes(32)).get_public_key()
    elif kind == "tap_merkle":
        i0.taproot_merkle_root = secrets.token_bytes(32)
    elif kind == "tap_derivations":
        i0.taproot_bip32_derivations = {}
    return psbt


KINDS = ["tx_version", "locktime", "sequence", "input_txid", "input_vout", "utxo_value",
         "utxo_script", "witness_script", "derivations", "sighash", "non_witness_utxo",
         "topup", "out_value", "out_script", "out_handover", "out_add", "out_drop",
         "payload_byte", "qc_round", "qc_epoch", "qc_commit", "qc_sigs", "qc_sig_garble",
         "records_drop", "records_alter", "records_garbage", "lineage_junk", "none",
         "tap_leaf", "tap_control", "tap_internal", "tap_merkle", "tap_derivations"]


@pytest.mark.parametrize("script", [SCRIPT_WSH, SCRIPT_TR], ids=["wsh", "tr"])
def test_mutated_requests_are_signed_exactly_or_refused(tmp_path, script):
    w = World(tmp_path, script)
    seen = {"signed": 0, "refused": 0}

    @settings(max_examples=250, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        # Every draw is made up front with fixed bounds: the journal (state outside
        # hypothesis) only decides how a drawn number is used.
        pick = data.draw(st.integers(0, 10**6), label="coin")
        r = data.draw(st.integers(0, 10**6), label="round")
        rate = data.draw(st.sampled_from([1.0, 2.0, 3.5]), label="rate")
        kinds = data.draw(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 10**6)),
                                   min_size=0, max_size=3), label="mutations")
        state = w.journal.state()
        # Coins of epoch 0 (a handover's output would need epoch 1's QCs).
        tips = sorted(((o, c) for o, c in state.spendable().items() if c.epoch == 0),
                      key=lambda kv: str(kv[0]))
        op, coin = tips[pick % len(tips)]
        parent = state.created_by(op)
        low = parent.round + 1 if parent is not None else 1
        rnd = low + r % 8
        if r % 97 == 0:
            rnd = max(rnd, 1000 - WINDOW)  # now and then, a handover
        spends = state.live_spends(op)
        if spends and r % 5:  # a coin already spent: another fee level of that checkpoint
            rnd = spends[0].round  # (and one time in five, a newer QC: a second checkpoint)
        if rnd > 999:
            return
        handover = rnd > 999 - WINDOW
        qc = w.qc(rnd)
        prop = propose(coin, qc, w.records, handover, rate, MAGIC)
        psbt = PSBT.parse(prop.psbt.serialize())
        qc_json = copy.deepcopy(qc.to_json())
        recs = [r.to_json() for r in w.records.values()]
        lineage: list = []
        for kind, n in kinds:
            try:
                mutate(kind, n, psbt, qc_json, recs, lineage, w)
            except (AttributeError, IndexError, KeyError, ZeroDivisionError, TypeError):
                pass  # a mutation that does not apply to this request
        try:
            b64 = psbt.to_string()
        except Exception:
            return  # not even serializable: nothing reaches the appliance
        out = w.app.handle_sign(b64, qc_json, recs, lineage)  # must not raise
        if not out.signed:
            assert out.reasons and all(isinstance(r, str) and r for r in out.reasons)
            seen["refused"] += 1
            return
        seen["signed"] += 1
        signed = PSBT.from_string(out.psbt)
        tx = signed.tx
        if out.from_journal:
            # A repeat of a transaction signed before: the very bytes that left then.
            entry = w.journal.state().by_txid(tx.txid().hex())
            assert entry is not None and entry.kind == "signed" and entry.signed_psbt == out.psbt
            return
        # Signed: exactly the checkpoint it would build itself for this QC and coin.
        got_qc = QC.from_json(qc_json)
        src = multisig_for(w.records[0])
        dest = src if tx.vout[1].script_pubkey == src.script_pubkey else multisig_for(
            w.records[1])
        spent = state.spendable()[Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout)]
        fee = spent.value - tx.vout[1].value
        expected = build_checkpoint_tx(spent, Payload(got_qc.epoch, got_qc.round,
                                                      got_qc.commit_state_id, magic=MAGIC),
                                       dest, fee)
        assert expected.serialize() == tx.serialize()
        assert 0 < fee <= Limits().max_fee_sat
        # Never two different checkpoints on one outpoint (fee levels excepted).
        per_coin: dict = {}
        for e in w.journal.state().signed:
            per_coin.setdefault(e.input, set()).add((e.payload, e.dest_epoch))
        assert all(len(v) == 1 for v in per_coin.values()), per_coin

    one()
    assert seen["signed"] >= 20 and seen["refused"] >= 60, seen
