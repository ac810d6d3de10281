"""A device that cannot sign a tapscript epoch says so before the epoch starts: when the
record is installed, when the multisig is registered, and in `device check`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from embit import bip39

from anchornode.bftsim import SimulatedBFTChain
from appliance.devices.profiles import check_capability, load_profiles, tapscript_reasons
from appliance.emulator import JadeEmulator
from appliance.journal import Journal
from appliance.policy import Limits
from appliance.signers.base import SignerError
from appliance.signers.hwi import HWISigner
from appliance.signers.software import SoftwareSigner
from appliance.signing import Appliance
from bftanchor.deployment import Deployment
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import SCRIPT_TR, SCRIPT_WSH
from bftanchor.template import Coin, Outpoint

MNEMONICS = [bip39.mnemonic_from_bytes(bytes([i + 31]) * 16) for i in range(21)]


@pytest.fixture(scope="module")
def jade():
    emu = JadeEmulator(port=0, mnemonic=MNEMONICS[0], network="testnet")
    emu.start()
    yield emu
    emu.stop()


def test_jade_validator_learns_at_install_time(jade, tmp_path):
    """Epoch 0 is wsh (4 keys); epoch 1 grows to 21 and is tapscript: the Jade's appliance
    refuses to arm it, with the reason, long before any checkpoint of epoch 1."""
    sim = SimulatedBFTChain.create(21, 100)
    hwi = HWISigner(device_type="jade", device_path=jade.path)
    signers = {"v0": hwi} | {
        v.id: SoftwareSigner.from_mnemonic(MNEMONICS[i])
        for i, v in enumerate(sim.validators[1:], start=1)
    }
    keys0 = {v.id: signers[v.id].pow_key(0) for v in sim.validators[:4]}
    rec0 = sim.make_record(0, keys0, SCRIPT_WSH, n=4)
    keys1 = {vid: s.pow_key(1, 3) for vid, s in signers.items()}
    rec1 = sim.make_record(1, keys1, SCRIPT_TR, n=21)
    coin = Coin(Outpoint("ab" * 32, 0), 1_000_000, 0)
    appliance = Appliance(
        Deployment("litecoin-regtest", b"BFTA", coin, rec0, 10),
        Journal(tmp_path / "j.sqlite", coin),
        hwi,
        Limits(),
    )
    problems = appliance.install_record(rec1.to_json())
    assert problems and "this device" in problems[0] and "cannot sign this epoch" in problems[0]
    assert "Blockstream Jade" in problems[0] and "jade.toml" in problems[0]
    assert 1 not in appliance.held_records()
    with pytest.raises(SignerError, match="cannot sign this epoch"):
        hwi.register(EpochMultisig(rec1))
    # The same device is fine with a wsh epoch.
    assert hwi.cannot_sign(rec0) == []


def test_every_profile_answers_for_a_tapscript_epoch():
    profiles = load_profiles()
    assert profiles
    for p in profiles:
        reasons = check_capability(p, SCRIPT_TR, 50, p.min_version)
        # HWI 3.2 signs no tapscript multisig on any profiled device (see the profiles).
        assert reasons and any("tr-multi_a" in r for r in reasons), (p.id, reasons)
    assert tapscript_reasons("nosuchdevice", 30)[0].startswith("this device cannot sign")
    too_big = check_capability(profiles[0], SCRIPT_TR, 1000, profiles[0].min_version)
    assert any("999" in r for r in too_big)


def test_device_check_lists_every_profile_for_a_size():
    out = subprocess.run(
        [sys.executable, "-m", "anchorcli", "device", "check", "--profiles",
         "--script", SCRIPT_TR, "--n", "30", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1, out.stderr
    rows = json.loads(out.stdout)
    assert {r["profile"] for r in rows} == {p.id for p in load_profiles()}
    assert all(not r["can_sign"] and r["reasons"] for r in rows)
    out = subprocess.run(
        [sys.executable, "-m", "anchorcli", "device", "check", "--profiles",
         "--script", SCRIPT_WSH, "--n", "4"],
        capture_output=True, text=True, timeout=60,
    )
    assert "Blockstream Jade" in out.stdout and "can sign" in out.stdout


def test_a_jade_operator_cannot_share_a_tapscript_key(jade, tmp_path):
    """`appliance share --script tr-sortedmulti_a` on a Jade: refused, with the reason,
    before any record is drafted."""
    from appliance.config import EXAMPLE, ApplianceConfig
    from appliance.share import make_share
    from bftanchor.share import ShareError

    cfg = tmp_path / "appliance.toml"
    text = EXAMPLE.replace('kind = "software"', 'kind = "hwi"').replace(
        'seed_file = "seed.txt"', f'device_type = "jade"\ndevice_path = "{jade.path}"')
    cfg.write_text(text)
    config = ApplianceConfig.load(cfg)
    from bftanchor.bftsig import pubkey_from_secret

    bft = pubkey_from_secret(b"\x11" * 32)
    with pytest.raises(ShareError, match="cannot sign this epoch"):
        make_share(config, "litecoin-regtest", 1, bft, SCRIPT_TR)
    share = make_share(config, "litecoin-regtest", 1, bft, SCRIPT_WSH)
    assert "/1h/2h]" in share.pow_key
