"""The operator console's test world, and its pure parts (decoding, the ceremony's order).

The world is one appliance whose signer is HWI on the Jade emulator, in manual approval
mode, with three software validators beside it and a certified next epoch. Requests
reach it through ApplianceService.handle, exactly as the serial link delivers them. No
PoW node is needed: the policy judges the coin by the journal, not by a chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import types
from pathlib import Path
from typing import Any

import pytest
from embit import bip39

from anchornode.bftsim import SimulatedBFTChain
from appliance.emulator import JadeEmulator
from appliance.journal import Journal
from appliance.policy import Limits
from appliance.serve import ApplianceService
from appliance.signers.hwi import HWISigner
from appliance.signers.software import SoftwareSigner
from appliance.signing import Appliance
from bftanchor.deployment import Deployment
from bftanchor.descriptor import EpochMultisig
from bftanchor.link.messages import MsgType
from bftanchor.payload import Payload
from bftanchor.template import Coin, Outpoint, build_checkpoint_psbt
from tui.backend import InProcessBackend
from tui.ceremony import ARM, FINGERPRINT, KEY, RECORD, REGISTER, Ceremony, CeremonyError
from tui.decode import decode_request, same_fingerprint, wallet_fingerprint

DEVICE_MNEMONIC = bip39.mnemonic_from_bytes(b"\x5a" * 16)
CHAIN = "litecoin-regtest"
MAGIC = b"BFTA"
T0 = 1_760_000_000.0  # the fixed "now" of the snapshot tests


class World:
    """v0's appliance on the emulator (through HWI) and a simulated BFT chain around it."""

    def __init__(self, tmp: Path, require_registration: bool = True) -> None:
        self.tmp = tmp
        self.sim = SimulatedBFTChain.create(4, 100, seed=7)
        self.emu = JadeEmulator(port=0, mnemonic=DEVICE_MNEMONIC, network="testnet",
                                require_registration=require_registration)
        self.emu.start()
        self.hwi = HWISigner(device_type="jade", device_path=self.emu.path)
        self.others = {
            v.id: SoftwareSigner.from_seed(hashlib.sha256(f"tui {v.id}".encode()).digest())
            for v in self.sim.validators[1:]
        }
        self.rec0 = self.sim.make_record(0, self.pow_keys(0))
        self.rec1 = self.sim.make_record(1, self.pow_keys(1))  # certified, not yet held
        self.ms0, self.ms1 = EpochMultisig(self.rec0), EpochMultisig(self.rec1)
        self.coin = Coin(Outpoint("cd" * 32, 0), 5_000_000, 0)
        self.deployment = Deployment(CHAIN, MAGIC, self.coin, self.rec0, 10)
        self.hwi.wallet_tag = self.deployment.device_tag  # as make_signer does
        self.journal_path = tmp / "journal.sqlite"
        self.appliance = Appliance(
            self.deployment, Journal(self.journal_path, self.coin), self.hwi, Limits()
        )
        self.service = ApplianceService(self.appliance, "v0", mode="manual")
        self.backend = InProcessBackend(self.service)
        self._rid = 0

    def pow_keys(self, epoch: int) -> dict[str, str]:
        keys = {vid: s.pow_key(epoch) for vid, s in self.others.items()}
        keys["v0"] = self.hwi.pow_key(epoch)
        return keys

    def request(
        self, round_: int, *, handover: bool = False, fee: int = 600, offer_next: bool = False
    ) -> dict[str, Any]:
        """A checkpoint request as an honest initiator builds it."""
        qc = self.sim.qc(0, round_)
        payload = Payload(0, qc.round, qc.commit_state_id, magic=MAGIC)
        dest = self.ms1 if handover else self.ms0
        psbt = build_checkpoint_psbt(self.coin, self.ms0, payload, dest, fee)
        records = [self.rec0] + ([self.rec1] if offer_next else [])
        return {"psbt": psbt.to_string(), "qc": qc.to_json(),
                "records": [r.to_json() for r in records]}

    def submit(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Deliver a request as the link does; returns (reply type, reply payload)."""
        self._rid += 1
        return self.service.handle(MsgType.SIGN_REQUEST, request, self._rid)

    def write_record(self, name: str = "epoch1.json") -> Path:
        path = self.tmp / name
        path.write_text(json.dumps(self.rec1.to_json(), indent=1))
        return path

    def close(self) -> None:
        self.emu.stop()
        self.appliance.journal.close()


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.close()


@pytest.fixture
def frozen_journal_time(monkeypatch: pytest.MonkeyPatch) -> float:
    """The journal and the queue stamp T0, so the screens show fixed times and ages."""
    fixed = types.SimpleNamespace(time=lambda: T0)
    monkeypatch.setattr("appliance.journal.time", fixed)
    monkeypatch.setattr("appliance.approvals.time", fixed)
    return T0


# --- the pure parts ---------------------------------------------------------------------


def test_decode_names_every_output_and_checks_each_signer(world: World) -> None:
    # Round 95: inside epoch 0's handover window (89, 99].
    kind, reply = world.submit(world.request(95, handover=True, offer_next=True))
    assert kind == MsgType.PENDING, reply
    (item,) = world.backend.pending()
    view = decode_request(item, world.appliance.held_records(), CHAIN, MAGIC)
    assert view.verdict_ok and view.reasons == []
    assert (view.epoch, view.round) == (0, 95)
    assert view.valid_signers == len(view.signers) >= 3 and view.threshold == 3
    assert view.inputs == [(f"{'cd' * 32}:0", 5_000_000)]
    assert view.outputs[0].role == "OP_RETURN payload" and "round 95" in view.outputs[0].payload
    assert view.dest_fingerprint == wallet_fingerprint(world.ms1) and not view.dest_armed
    assert "HANDOVER" in view.outputs[1].role and view.handover and view.dest_epoch == 1
    assert view.outputs[1].address.startswith("rltc1")
    assert view.fee == 600 and view.fee_rate and view.fee_rate > 1


def test_decode_marks_a_forged_signer(world: World) -> None:
    request = world.request(6)
    sigs = request["qc"]["signatures"]
    vid = sorted(sigs)[0]
    sigs[vid] = ("00" * 63) + "01"
    item = {"id": "x", "created": 0, **request, "verdict": {"ok": False, "reasons": ["bad"]}}
    view = decode_request(item, world.appliance.held_records(), CHAIN, MAGIC)
    bad = [s for s in view.signers if not s.valid]
    assert [s.id for s in bad] == [vid]


def test_ceremony_cannot_be_done_out_of_order(world: World) -> None:
    c = Ceremony(world.rec0)
    for step in (RECORD, FINGERPRINT, REGISTER, ARM):
        assert c.check(step) and "first (a)" in c.check(step)
    with pytest.raises(CeremonyError, match="must wait"):
        c.registered("addr")
    with pytest.raises(CeremonyError, match="must wait"):
        c.armed()
    c.show_key(world.hwi.pow_key(1))
    with pytest.raises(CeremonyError, match="is done"):
        c.show_key("again")
    with pytest.raises(CeremonyError, match="cannot read"):
        c.load_record(str(world.tmp / "missing.json"))
    assert c.step == RECORD
    c.load_record(str(world.write_record()))
    assert c.holds_key and len(c.certifiers) >= 3
    with pytest.raises(CeremonyError, match="does not match"):
        c.confirm_fingerprint("0000 0000")
    c.confirm_fingerprint(c.fingerprint.lower().replace(" ", ""))
    c.registered("rltc1qexample")
    c.armed()
    assert c.done and c.check(KEY)


def test_ceremony_refuses_a_record_the_quorum_did_not_certify(world: World) -> None:
    c = Ceremony(world.rec0)
    c.show_key(world.hwi.pow_key(1))
    forged = world.rec1.to_json()
    forged["end_round"] += 1  # the certificate no longer covers the body
    path = world.tmp / "forged.json"
    path.write_text(json.dumps(forged))
    with pytest.raises(CeremonyError, match="bad record"):
        c.load_record(str(path))
    assert c.step == RECORD


def test_wallet_fingerprint_is_grouped_and_compared_loosely(world: World) -> None:
    fp = wallet_fingerprint(world.ms1)
    assert len(fp) == 9 and fp[4] == " "
    digest = hashlib.sha256(world.ms1.descriptor().encode()).hexdigest()[:8]
    assert fp.replace(" ", "").lower() == digest
    assert same_fingerprint(f" {digest[:4]}-{digest[4:].upper()} ", fp)
    assert not same_fingerprint("", fp)


def test_cli_refuses_bad_usage_before_drawing(tmp_path: Path) -> None:
    from anchorcli.main import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert main(["tui", "--config", str(tmp_path / "missing.toml")]) == 2
        cfg = tmp_path / "appliance.toml"
        cfg.write_text("")
        assert main(["tui", "--config", str(cfg), "--control", "x.sock", "--link", "x"]) == 2
        assert main(["tui", "--config", str(cfg)]) == 2  # no deployment: said, not raised
        assert (tmp_path / "tui.log").exists()  # logs went to the file, not the terminal
    finally:  # the console moved the root logger to its file: give pytest its own back
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
