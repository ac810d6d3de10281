"""The red team's attacks on the appliance: a node, an initiator and a link that lie.

The attacker controls one validator's online node, the initiator and the serial link,
not k honest validators' keys. Each test is a hole found on main and closed: it drives
the real path (`bft-anchor appliance sign` on a directory made by `appliance init`, or
`appliance serve` on a pty) and reads the verdict and the journal back. No PoW node is
needed: the coin is named by the deployment file and nothing here depends on the chain.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from embit.psbt import PSBT, InputScope, OutputScope
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput
from helpers import MAGIC, seed_for

from anchorharness.cliappliance import CLI, CliAppliance, run_cli
from anchorharness.proposal import propose
from anchornode.procutil import stop_process
from appliance.serve import control_call
from appliance.signers.software import SoftwareSigner
from bftanchor.link.frame import encode_frame
from bftanchor.link.messages import MsgType
from bftanchor.link.pty import open_pty_pair
from bftanchor.qc import QC
from bftanchor.template import TOPUP_SEQUENCE, Coin, Outpoint, put_signature

GENESIS = Coin(Outpoint("5a" * 32, 1), 5_000_000, 0)


class World(CliAppliance):
    """Four validators, v0 ours (made by `appliance init`); epochs 0 and 1 of 100 rounds."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, GENESIS, "redteam", sim_seed=11)

    def qc(self, rnd: int, epoch: int = 0) -> QC:
        return self.sim.qc(epoch, rnd)

    def request(self, psbt: PSBT | str, qc: QC | dict, **extra) -> dict:
        return {"psbt": psbt if isinstance(psbt, str) else psbt.to_string(),
                "qc": qc if isinstance(qc, dict) else qc.to_json(),
                "records": [r.to_json() for r in self.records.values()], **extra}

    def sign(self, request: dict | str) -> tuple[int, dict]:
        out = self.sign_cli(request)
        assert out.returncode in (0, 1), (out.returncode, out.stderr)
        return out.returncode, json.loads(out.stdout)


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def p2wpkh() -> Script:
    return Script(b"\x00\x14" + secrets.token_bytes(20))


def funding(value: int) -> Transaction:
    """A fee-wallet transaction with one P2WPKH output (its full bytes prove the amount)."""
    return Transaction(2, [TransactionInput(secrets.token_bytes(32), 0)],
                       [TransactionOutput(value, p2wpkh())], 0)


def topped_up(world: World, rnd: int, topups: list[Transaction], coin_add: int,
              change: TransactionOutput | None) -> tuple[PSBT, QC]:
    """A checkpoint PSBT with top-up inputs (each output 0 of its funding tx), the coin
    output raised by coin_add and an optional change output."""
    qc = world.qc(rnd)
    psbt = propose(GENESIS, qc, world.records, False, 2.0, MAGIC).psbt
    psbt.outputs[1].value = GENESIS.value + coin_add
    for prev in topups:
        psbt.inputs.append(InputScope(vin=TransactionInput(prev.txid(), 0,
                                                           sequence=TOPUP_SEQUENCE)))
        psbt.inputs[-1].non_witness_utxo = prev
        psbt.inputs[-1].witness_utxo = prev.vout[0]
    if change is not None:
        psbt.outputs.append(OutputScope(vout=change))
    return psbt, qc


def test_a_topup_spent_twice_is_refused(world):
    """One fee-wallet coin listed as two inputs was "proven" twice: its amount counted
    twice towards the fee and the change (consensus rejects such a transaction, but the
    appliance signed it and reported a fee it never checked)."""
    prev = funding(100_000)
    psbt, qc = topped_up(world, 5, [prev, prev], 0,
                         TransactionOutput(199_000, p2wpkh()))
    world.refused(world.request(psbt, qc), "spends", "again, expected each top-up once")


def test_topup_change_is_p2wpkh_above_dust(world):
    """Top-up change that no node relays (a non-standard script, or dust) would make a
    level that can never be mined: a k-of-n signing round spent for nothing."""
    prev = funding(10_000)
    # 10_000 in: 8_500 to the coin, 500 change, 1_000 fee: the change is dust.
    psbt, qc = topped_up(world, 5, [prev], 8_500, TransactionOutput(500, p2wpkh()))
    world.refused(world.request(psbt, qc), "output 2 returns 500 sat, expected more than "
                  "the dust limit of 546 sat")
    psbt, qc = topped_up(world, 5, [prev], 0, TransactionOutput(9_000, Script(b"\x51" * 300)))
    world.refused(world.request(psbt, qc), "expected P2WPKH top-up change")
    # The honest shape still signs: P2WPKH change above dust.
    psbt, qc = topped_up(world, 5, [prev], 0, TransactionOutput(9_000, p2wpkh()))
    world.signed(world.request(psbt, qc))


def test_a_request_nested_too_deep_is_a_journaled_refusal(world):
    """JSON nested deeper than the reader's recursion limit escaped as exit 2, unjournaled."""
    world.refused("[" * 100_000, "the request is not JSON", "expected an object")


def test_an_unreadable_sign_request_on_the_link_is_journaled(world):
    """Over the link, a sign request whose fields do not read (the PSBT not base64) got a
    link error only: no verdict in the journal. Now it is a journaled refusal naming it."""
    sockdir = Path(tempfile.mkdtemp(prefix="bfa-rt-"))  # AF_UNIX paths are short
    control = sockdir / "control.sock"
    master, slave = open_pty_pair()
    proc = subprocess.Popen(
        [*CLI, "appliance", "serve", "--config", str(world.config), "--link", slave,
         "--control", str(control)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:  # the link open too: what is written before its open is flushed
                if control_call(control, {"cmd": "status"}, timeout=2).get("link_connected"):
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the appliance did not come up"
            time.sleep(0.05)
        body = json.dumps({"psbt": "not base64!", "qc": {}, "records": []}).encode()
        master.write(encode_frame(MsgType.SIGN_REQUEST, 0x5A5A0001, body))
        deadline = time.monotonic() + 30
        while True:
            history = control_call(control, {"cmd": "history", "limit": 50})["history"]
            refusals = [h for h in history if h["decision"] == "refused"]
            if refusals:
                break
            assert time.monotonic() < deadline, history
            time.sleep(0.05)
        reasons = " | ".join(refusals[0]["detail"]["reasons"])
        assert "the sign request does not read" in reasons and "psbt" in reasons, reasons
        # An epoch record the appliance will not hold (not certified) is refused on the
        # link and journaled too.
        forged = world.records[1].with_certificate({}).to_json()
        body = json.dumps({"record": forged}).encode()
        master.write(encode_frame(MsgType.INSTALL_RECORD, 0x5A5A0002, body))
        deadline = time.monotonic() + 30
        while True:
            history = control_call(control, {"cmd": "history", "limit": 50})["history"]
            refusals = [h for h in history if h["decision"] == "refused"]
            if len(refusals) == 2:
                break
            assert time.monotonic() < deadline, history
            time.sleep(0.05)
        reasons = " | ".join(refusals[0]["detail"]["reasons"])  # newest first
        assert "epoch record not installed" in reasons and "not certified" in reasons, reasons
        assert control_call(control, {"cmd": "status"})["status"]["epochs"] == [0]
    finally:
        stop_process(proc)
        master.close()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert os.path.exists(world.dir / "journal.sqlite")


def test_a_journal_import_cannot_bring_an_uncertified_epoch_record(world):
    """The interchange file's epoch records were stored as given: an export edited to
    carry an epoch-1 record of the attacker's own keys (no certificate) made the
    appliance sign a handover of the coin to the attacker. Records are verified back to
    the deployment's epoch 0 on import, as everywhere else."""
    thief = {v: SoftwareSigner.from_seed(seed_for(f"thief/{v}")).pow_key(1)
             for v in world.signers}
    forged = world.sim.make_record(1, thief).with_certificate({})
    exported = run_cli("appliance", "journal", "export", "--config", str(world.config))
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)
    data["records"].append(forged.to_json())
    path = world.base / "edited-export.json"
    path.write_text(json.dumps(data))
    imp = run_cli("appliance", "journal", "import", "--config", str(world.config), str(path))
    assert imp.returncode == 1, (imp.stdout, imp.stderr)
    lines = imp.stderr.strip().splitlines()
    assert len(lines) == 1 and "record for epoch 1 is not certified" in lines[0], imp.stderr
    # The handover to the thief's keys, in the window, offering no record: refused.
    qc = world.qc(95)
    records = {0: world.records[0], 1: forged}
    psbt = propose(GENESIS, qc, records, True, 2.0, MAGIC).psbt
    world.refused({"psbt": psbt.to_string(), "qc": qc.to_json(), "records": []},
                  "output 1 pays the coin to")


def test_a_qc_round_beyond_sqlite_integers_is_a_journaled_refusal(world):
    """A QC round of 2**64 - 1 is a valid u64 but not an SQLite INTEGER: journaling its
    refusal raised OverflowError out of the appliance (exit 2, nothing journaled)."""
    qc = world.qc(5)
    psbt = propose(GENESIS, qc, world.records, False, 2.0, MAGIC).psbt
    for field in ("round", "epoch"):
        data = qc.to_json()
        data["vote_info"][field] = 2**64 - 1
        world.refused(world.request(psbt, data), "vote_info_hash does not match"
                      if field == "round" else "no certified epoch record held")


def test_one_bft_key_under_two_ids_is_refused(world, tmp_path):
    """A record listing one BFT key under two validator ids was accepted, and that key
    then counted twice towards a QC's (or a certificate's) threshold. Records come from
    the deployment or a quorum's certificate, so this is defence in depth: such a record
    is malformed wherever it is read (here, the deployment: one line, exit 2)."""
    recs = world.records[0].to_json()
    recs["validators"][3]["bft_pubkey"] = recs["validators"][2]["bft_pubkey"]
    dep = json.loads((world.dir / "deployment.json").read_text())
    dep["epoch0"] = recs
    (world.dir / "deployment.json").write_text(json.dumps(dep))
    out = run_cli("appliance", "status", "--config", str(world.config))
    assert out.returncode == 2 and "two validators share a bft_pubkey" in out.stderr, out
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_junk_partial_signature_on_the_coin_is_refused_before_the_journal(world):
    """A PSBT carrying a junk "signature" under this appliance's own key: the signer kept
    it and returned none of its own, so the request was refused only after the journal
    had bound the coin to this checkpoint (a signing row, no signature). Now it is
    refused by the policy, with nothing bound; valid signatures of others may stay."""
    qc = world.qc(5)
    prop = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    psbt = prop.psbt
    pub = prop.source.key_for("v0").pubkey
    psbt.inputs[0].partial_sigs[pub] = bytes.fromhex("3006020101020101") + b"\x01"
    world.refused(world.request(psbt, qc), "input 0 carries a partial signature that is "
                  "not valid")
    # Another validator's real signature on the same PSBT is fine; ours is added.
    clean = propose(GENESIS, qc, world.records, False, 2.0, MAGIC).psbt
    other = world.signers["v1"].sign(clean, prop.source)
    out = world.signed(world.request(other, qc))
    assert set(PSBT.from_string(out["psbt"]).inputs[0].partial_sigs) == {
        pub, prop.source.key_for("v1").pubkey}


def test_a_tapscript_request_the_signer_would_fail_is_refused_before_the_journal(tmp_path):
    """The same for a tapscript epoch: a junk BIP340 "signature" under this appliance's
    key for the leaf was kept by the signer, and a top-up without witness_utxo made the
    BIP341 digest fail in the signer; both bound the coin with no signature out."""
    from bftanchor.epoch import SCRIPT_TR

    w = World(tmp_path)
    w.records = {e: w.sim.make_record(e, {v: s.pow_key(e, 3) for v, s in w.signers.items()},
                                      SCRIPT_TR) for e in (0, 1)}
    genesis = w.genesis
    w.save_deployment()
    qc = w.qc(5)
    prop = propose(genesis, qc, w.records, False, 2.0, MAGIC)
    psbt = prop.psbt
    pub = prop.source.key_for("v0").pubkey
    put_signature(psbt, 0, prop.source, pub, bytes(64) + b"\x01")
    w.refused(w.request(psbt, qc), "input 0 carries a partial signature that is not valid")
    # A top-up without witness_utxo: the BIP341 digest needs every input's output.
    prev = funding(10_000)
    bare = propose(genesis, qc, w.records, False, 2.0, MAGIC).psbt
    bare.outputs[1].value = genesis.value
    bare.inputs.append(InputScope(vin=TransactionInput(prev.txid(), 0,
                                                       sequence=TOPUP_SEQUENCE)))
    bare.inputs[-1].non_witness_utxo = prev
    bare.outputs.append(OutputScope(vout=TransactionOutput(9_000, p2wpkh())))
    w.refused(w.request(bare, qc), "top-up input 1 carries no witness_utxo")
    clean = propose(genesis, qc, w.records, False, 2.0, MAGIC).psbt
    w.signed(w.request(clean, qc))


def test_lying_key_derivations_are_refused_before_the_journal(world):
    """Input 0's derivations stripped, or naming this appliance's key at another path:
    the software signer refused, but only after the journal had bound the coin to this
    checkpoint, so the next real checkpoint on the coin (another QC) was refused too.
    Now the policy refuses first, and the real checkpoint signs afterwards."""
    qc = world.qc(5)
    prop = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    pub = prop.source.key_for("v0").pubkey
    stripped = PSBT.parse(prop.psbt.serialize())
    stripped.inputs[0].bip32_derivations = {}
    world.refused(world.request(stripped, qc), "input 0's key derivations are not epoch 0's")
    moved = PSBT.parse(prop.psbt.serialize())
    der = moved.inputs[0].bip32_derivations[pub]
    der.derivation = der.derivation[:-1] + [7]
    world.refused(world.request(moved, qc), "input 0's key derivations are not epoch 0's")
    nxt = world.qc(6)
    rc, out = world.sign(world.request(propose(GENESIS, nxt, world.records, False, 2.0,
                                               MAGIC).psbt, nxt))
    assert rc == 0 and out["signed"], out


def test_a_psbt_a_device_cannot_sign_is_refused_before_the_journal(world):
    """No witness_script on the coin input, or the input already finalized: a device
    (HWI) then signs nothing, after the journal had bound the coin. Refused first."""
    from embit.script import Witness

    qc = world.qc(5)
    prop = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    bare = PSBT.parse(prop.psbt.serialize())
    bare.inputs[0].witness_script = None
    world.refused(world.request(bare, qc), "input 0 carries no witness_script")
    final = PSBT.parse(prop.psbt.serialize())
    final.inputs[0].final_scriptwitness = Witness([b"", prop.source.witness_script.data])
    world.refused(world.request(final, qc), "input 0 is already finalized")
    world.signed(world.request(prop.psbt, qc))
