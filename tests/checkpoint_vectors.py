"""Builds tests/vectors/checkpoint.json: the checkpoint transaction, its PSBT and scripts,
a QC inside its epoch's rounds, a deployment file and an epochs file, all from the keys
and seeds of the design's formats.json. docs/protocol.md cites these vectors.

    python tests/checkpoint_vectors.py --write    # regenerate (only on a format change)
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from embit.script import Script
from embit.transaction import TransactionOutput

from appliance.signers.software import SoftwareSigner
from bftanchor.bftsig import sign_compact
from bftanchor.deployment import Deployment
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import EpochRecord
from bftanchor.network import network
from bftanchor.payload import Payload
from bftanchor.qc import QC
from bftanchor.template import (
    Coin,
    Outpoint,
    TopUp,
    build_checkpoint_psbt,
    build_checkpoint_tx,
    finalize,
    sighash,
)

HERE = Path(__file__).parent / "vectors"
OUT = HERE / "checkpoint.json"
CHAIN = "litecoin-regtest"
WINDOW = 10


def _h(label: str) -> str:
    return hashlib.sha256(f"bft-anchor vectors {label}".encode()).hexdigest()


def multisig_json(ms: EpochMultisig) -> dict[str, Any]:
    return {
        "descriptor": ms.descriptor(),
        "keys_in_script_order": [
            {"id": k.validator_id, "pubkey": k.pubkey.sec().hex(),
             "fingerprint": k.fingerprint.hex(),
             "path": "m/" + "/".join(f"{i - 0x80000000}h" if i >= 0x80000000 else str(i)
                                      for i in k.path)}
            for k in ms.keys
        ],
        "witness_script": ms.witness_script.data.hex(),
        "script_pubkey": ms.script_pubkey.data.hex(),
        "address_litecoin_regtest": ms.address(network(CHAIN)),
    }


def qc_in_range(formats: dict[str, Any]) -> QC:
    """The design's QC moved to round 241 (epoch 2 is rounds 200..299) and re-signed by
    v0, v1, v2: the vector's own QC (round 41) predates the round rule."""
    data = copy.deepcopy(formats["qc"])
    data["vote_info"].update(round=241, parent_round=240)
    vih = QC.from_json(data).vote_info.hash()
    data["ledger_commit_info"]["vote_info_hash"] = vih.hex()
    digest = QC.from_json(data).signed_digest()
    data["signatures"] = {
        vid: sign_compact(bytes.fromhex(formats["bft_private_keys"][vid]), digest).hex()
        for vid in ("v0", "v1", "v2")
    }
    return QC.from_json(data)


def build(formats: dict[str, Any]) -> dict[str, Any]:
    epoch2 = EpochRecord.from_json(formats["epoch_2"])
    epoch3 = EpochRecord.from_json(formats["epoch_3_record_certified_by_epoch_2"])
    ms2, ms3 = EpochMultisig(epoch2), EpochMultisig(epoch3)
    signers = {vid: SoftwareSigner.from_seed(bytes.fromhex(seed))
               for vid, seed in formats["pow_seeds_hex"].items()}
    qc = qc_in_range(formats)
    payload = Payload(qc.epoch, qc.round, qc.commit_state_id)
    coin = Coin(Outpoint(_h("coin"), 1), 100_000_000, 2)
    fee = 1_000

    psbt = build_checkpoint_psbt(coin, ms2, payload, ms2, fee)
    unsigned = psbt.to_string()
    partial = {}
    for vid in ("v0", "v1", "v3"):  # any k = 3 of the 4
        signed = signers[vid].sign(psbt, ms2)
        pub = ms2.key_for(vid).pubkey
        partial[vid] = signed.inputs[0].partial_sigs[pub].hex()
        psbt.inputs[0].partial_sigs[pub] = signed.inputs[0].partial_sigs[pub]
    final = finalize(psbt, ms2)

    handover_qc_round = 295  # inside epoch 2's window 290..299
    handover = build_checkpoint_tx(coin, Payload(2, handover_qc_round, qc.commit_state_id),
                                   ms3, fee)

    topup_prev = Outpoint(_h("fee wallet coin"), 0)
    fee_script = Script(bytes.fromhex("0014") + bytes.fromhex(_h("fee wallet key"))[:20])
    topup = TopUp(((topup_prev, TransactionOutput(50_000, fee_script)),), 20_000, fee_script)
    topped = build_checkpoint_tx(coin, payload, ms2, 1_500, topup)

    deployment = Deployment(CHAIN, b"BFTA", coin, epoch2, WINDOW)
    return {
        "note": "Built by tests/checkpoint_vectors.py from formats.json's keys and seeds "
                "(public test keys: never use them for value). See docs/protocol.md.",
        "epoch_2_multisig": multisig_json(ms2),
        "epoch_3_multisig": multisig_json(ms3),
        "qc_in_range": qc.to_json(),
        "payload_hex": payload.encode().hex(),
        "coin": {"txid": coin.outpoint.txid, "vout": coin.outpoint.vout, "value": coin.value,
                 "epoch": coin.epoch},
        "checkpoint": {
            "fee": fee,
            "unsigned_tx": build_checkpoint_tx(coin, payload, ms2, fee).serialize().hex(),
            "txid": final.txid().hex(),
            "psbt_unsigned": unsigned,
            "sighash_input0": sighash(psbt, 0, ms2).hex(),
            "partial_sigs": partial,
            "signed_tx": final.serialize().hex(),
        },
        "handover": {
            "round": handover_qc_round,
            "fee": fee,
            "unsigned_tx": handover.serialize().hex(),
            "txid": handover.txid().hex(),
        },
        "topup": {
            "input": {"txid": topup_prev.txid, "vout": topup_prev.vout, "value": 50_000,
                      "script_pubkey": fee_script.data.hex()},
            "amount": 20_000,
            "fee": 1_500,
            "unsigned_tx": topped.serialize().hex(),
        },
        "deployment": deployment.to_json(),
        "epochs_file": [epoch2.to_json(), epoch3.to_json()],
    }


def formats() -> dict[str, Any]:
    return json.loads((HERE / "formats.json").read_text())


if __name__ == "__main__":
    data = build(formats())
    if "--write" in sys.argv:
        OUT.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {OUT}")
    else:
        print(json.dumps(data, indent=1))
