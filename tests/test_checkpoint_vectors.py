"""tests/vectors/checkpoint.json: the code still builds it byte for byte, and a second
library (python-bitcoinlib) reads it the way docs/protocol.md says."""

from __future__ import annotations

import hashlib
import json

import pytest
from bitcoin.core import CMutableTransaction, CTransaction
from bitcoin.core.script import SIGHASH_ALL, SIGVERSION_WITNESS_V0, CScript, SignatureHash
from checkpoint_vectors import OUT, build
from embit.ec import PublicKey, Signature

from bftanchor.deployment import Deployment, load_epochs
from bftanchor.epoch import verify_chain


@pytest.fixture(scope="module")
def pinned():
    return json.loads(OUT.read_text())


def test_the_code_still_builds_the_vectors(vectors, pinned):
    assert build(vectors) == pinned


def test_checkpoint_shape_read_by_another_library(pinned):
    tx = CTransaction.deserialize(bytes.fromhex(pinned["checkpoint"]["unsigned_tx"]))
    assert tx.nVersion == 2 and tx.nLockTime == 0 and len(tx.vin) == 1
    assert tx.vin[0].nSequence == 1  # BIP68: one block, relative; also BIP125-replaceable
    assert tx.vin[0].prevout.hash[::-1].hex() == pinned["coin"]["txid"]
    assert tx.vin[0].prevout.n == pinned["coin"]["vout"]
    assert tx.vout[0].nValue == 0
    assert bytes(tx.vout[0].scriptPubKey) == bytes.fromhex("6a35" + pinned["payload_hex"])
    ws = bytes.fromhex(pinned["epoch_2_multisig"]["witness_script"])
    assert bytes(tx.vout[1].scriptPubKey) == b"\x00\x20" + hashlib.sha256(ws).digest()
    assert tx.vout[1].nValue == pinned["coin"]["value"] - pinned["checkpoint"]["fee"]


def test_witness_script_is_sorted_3_of_4(pinned):
    ms = pinned["epoch_2_multisig"]
    keys = [bytes.fromhex(k["pubkey"]) for k in ms["keys_in_script_order"]]
    assert keys == sorted(keys)  # BIP67
    expected = b"\x53" + b"".join(b"\x21" + k for k in keys) + b"\x54\xae"
    assert bytes.fromhex(ms["witness_script"]) == expected


def test_signatures_verify_against_an_independent_sighash(pinned):
    cp = pinned["checkpoint"]
    ws = CScript(bytes.fromhex(pinned["epoch_2_multisig"]["witness_script"]))
    unsigned = CMutableTransaction.from_tx(
        CTransaction.deserialize(bytes.fromhex(cp["unsigned_tx"])))
    digest = SignatureHash(ws, unsigned, 0, SIGHASH_ALL, amount=pinned["coin"]["value"],
                           sigversion=SIGVERSION_WITNESS_V0)
    assert digest.hex() == cp["sighash_input0"]
    signed = CTransaction.deserialize(bytes.fromhex(cp["signed_tx"]))
    stack = list(signed.wit.vtxinwit[0].scriptWitness.stack)
    assert stack[0] == b"" and stack[-1] == bytes(ws) and len(stack) == 2 + 3
    keys = {k["id"]: k["pubkey"] for k in pinned["epoch_2_multisig"]["keys_in_script_order"]}
    order = [k["pubkey"] for k in pinned["epoch_2_multisig"]["keys_in_script_order"]]
    # CHECKMULTISIG wants the signatures in the keys' script order.
    signers = sorted(cp["partial_sigs"], key=lambda vid: order.index(keys[vid]))
    assert [s.hex() for s in stack[1:-1]] == [cp["partial_sigs"][v] for v in signers]
    for vid, sig in cp["partial_sigs"].items():
        raw = bytes.fromhex(sig)
        assert raw[-1] == SIGHASH_ALL
        assert PublicKey.parse(bytes.fromhex(keys[vid])).verify(Signature.parse(raw[:-1]), digest)
    assert signed.GetTxid()[::-1].hex() == cp["txid"]


def test_handover_pays_epoch_3_and_topups_are_replaceable(pinned):
    ho = CTransaction.deserialize(bytes.fromhex(pinned["handover"]["unsigned_tx"]))
    assert ho.vin[0].nSequence == 1
    assert bytes(ho.vout[1].scriptPubKey).hex() == pinned["epoch_3_multisig"]["script_pubkey"]
    top = CTransaction.deserialize(bytes.fromhex(pinned["topup"]["unsigned_tx"]))
    assert [i.nSequence for i in top.vin] == [1, 0xFFFFFFFD]
    t = pinned["topup"]
    assert top.vout[1].nValue == pinned["coin"]["value"] + t["amount"]
    assert top.vout[2].nValue == t["input"]["value"] - t["amount"] - t["fee"]
    assert bytes(top.vout[2].scriptPubKey).hex() == t["input"]["script_pubkey"]


def test_deployment_and_epochs_file(pinned, tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(pinned["deployment"]))
    (tmp_path / "e.json").write_text(json.dumps(pinned["epochs_file"]))
    dep = Deployment.load(tmp_path / "d.json")
    assert dep.handover_window == 10 and dep.epoch0.epoch == 2
    chain = verify_chain(load_epochs(tmp_path / "e.json"), dep.epoch0)
    assert [r.epoch for r in chain] == [2, 3]
