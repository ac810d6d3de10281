"""`bft-anchor device list/check` against an emulator on HWI's emulator port."""

from __future__ import annotations

import json

import pytest
from embit import bip39

from anchorharness.clirun import run_cli
from anchornode.bftsim import SimulatedBFTChain
from appliance.emulator import JadeEmulator
from appliance.signers.software import SoftwareSigner

MNEMONIC = bip39.mnemonic_from_bytes(b"\x42" * 16)
# HWI's fixed emulator port: under `-n 2 --dist loadgroup` these share one xdist worker
# with the other test that binds it (test_emulator_hwi.py), never running beside it.
pytestmark = pytest.mark.xdist_group("hwi_emulator_port_30121")


@pytest.fixture
def emulator():
    emu = JadeEmulator(port=30121, mnemonic=MNEMONIC, network="testnet")
    emu.start()
    yield emu
    emu.stop()


def run(*args):
    """`bft-anchor device ARGS` (anchorcli's main in this process: anchorharness/clirun.py)."""
    return run_cli("device", *args)


def epoch_file(tmp_path, with_device: bool, n: int = 4):
    sim = SimulatedBFTChain.create(n, 10)
    keys = {v.id: SoftwareSigner.from_seed(bytes([i + 1]) * 32).pow_key(0)
            for i, v in enumerate(sim.validators)}
    if with_device:
        keys["v0"] = SoftwareSigner.from_mnemonic(MNEMONIC).pow_key(0)
    path = tmp_path / "epoch.json"
    path.write_text(json.dumps(sim.make_record(0, keys).to_json()))
    return path


def test_list_shows_the_emulator_with_its_profile(emulator):
    out = run("list", "--emulators", "--json")
    assert out.returncode == 0, out.stderr
    (dev,) = [d for d in json.loads(out.stdout) if d["fingerprint"] == emulator.fingerprint]
    assert dev["type"] == "jade" and dev["profile"] == "jade"


def test_check_says_yes_for_its_epoch_and_why_not_otherwise(emulator, tmp_path):
    ok = run("check", "--emulators", "--epoch", str(epoch_file(tmp_path, True)),
             "--fingerprint", emulator.fingerprint)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "can sign" in ok.stdout
    no = run("check", "--emulators", "--epoch", str(epoch_file(tmp_path, False)),
             "--fingerprint", emulator.fingerprint, "--json")
    assert no.returncode == 1
    reasons = json.loads(no.stdout)["reasons"]
    assert any("holds none of epoch 0's keys" in r for r in reasons)


def test_check_names_the_jade_multisig_limit(emulator, tmp_path):
    out = run("check", "--emulators", "--epoch", str(epoch_file(tmp_path, True, n=16)),
              "--fingerprint", emulator.fingerprint, "--json")
    assert out.returncode == 1
    assert any("16" in r for r in json.loads(out.stdout)["reasons"])
