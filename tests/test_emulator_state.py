"""Registration limits, the state file across restarts, and the command line."""

from __future__ import annotations

import json
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
from embit import bip32, bip39
from emulator_fixtures import (
    ACCOUNT,
    DEVICE_MNEMONIC,
    TPUB,
    MultisigCoin,
    checkpoint_psbt,
    cosigners,
    descriptor,
    hwi_client,
    root_of,
)
from hwilib.commands import displayaddress, getxpub, signtx
from hwilib.common import Chain
from hwilib.devices.jade import JadeClient
from hwilib.devices.jadepy import JadeAPI, JadeError

from appliance.emulator.cli import main

pytest_plugins = ["emulator_fixtures"]  # the start_emulator fixture


def signer_entry(cosigner) -> dict:
    return {"fingerprint": cosigner.fingerprint, "derivation": ACCOUNT,
            "xpub": cosigner.account_xpub, "path": []}


def test_at_most_16_multisig_registrations(start_emulator):
    emu = start_emulator()
    device, *others = cosigners(18)
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        for i in range(16):
            assert jade.register_multisig("testnet", f"w{i}", "wsh(multi(k))", True, 2,
                                          [signer_entry(device), signer_entry(others[i])])
        with pytest.raises(JadeError) as full:
            jade.register_multisig("testnet", "w16", "wsh(multi(k))", True, 2,
                                   [signer_entry(device), signer_entry(others[16])])
        assert (full.value.code, full.value.message) == (
            JadeError.BAD_PARAMETERS, "Already have maximum number of multisig wallets")
        prompts = len(emu.prompts)
        # Identical re-registration is a no-op without a prompt; overwriting is allowed.
        assert jade.register_multisig("testnet", "w5", "wsh(multi(k))", True, 2,
                                      [signer_entry(device), signer_entry(others[5])])
        assert len(emu.prompts) == prompts
        assert jade.register_multisig("testnet", "w5", "wsh(multi(k))", True, 1,
                                      [signer_entry(device), signer_entry(others[5])])
        assert emu.prompts[-1].details["overwriting"] is True

        summaries = jade.get_registered_multisigs()
        assert sorted(summaries) == sorted(f"w{i}" for i in range(16))
        assert summaries["w5"] == {"variant": "wsh(multi(k))", "sorted": True, "threshold": 1,
                                   "num_signers": 2, "master_blinding_key": None}
        detail = jade.get_registered_multisig("w0")
        assert detail["descriptor"]["signers"][1]["xpub"] == others[0].account_xpub


def test_registration_validation_errors(start_emulator):
    emu = start_emulator()
    device, *others = cosigners(17)
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        def error_of(name, threshold, signers, variant="wsh(multi(k))") -> tuple[int, str]:
            with pytest.raises(JadeError) as err:
                jade.register_multisig("testnet", name, variant, True, threshold, signers)
            return err.value.code, err.value.message

        sixteen = [signer_entry(device)] + [signer_entry(c) for c in others[:15]]
        assert error_of("big", 2, sixteen) == (JadeError.BAD_PARAMETERS,
                                               "Failed to extract co-signers")
        assert error_of("nomine", 1, [signer_entry(c) for c in others[:2]]) == (
            JadeError.BAD_PARAMETERS, "Failed to validate co-signers")
        forged = dict(signer_entry(device), xpub=others[0].account_xpub)
        assert error_of("forged", 1, [forged, signer_entry(others[1])])[1] == \
            "Failed to validate co-signers"
        assert error_of("name is too long!", 1, [signer_entry(device)])[1] == \
            "Missing or invalid multisig name parameter"
        assert error_of("v", 1, [signer_entry(device)], variant="tr(multi(k))")[1] == \
            "Invalid script variant parameter"
        assert error_of("t", 3, [signer_entry(device), signer_entry(others[0])])[1] == \
            "Invalid multisig threshold"
    assert emu.device.registry.all() == [] and emu.prompts == []


def test_state_file_persists_wallet_network_and_registrations(start_emulator, tmp_path):
    state = tmp_path / "jade.json"
    signers = cosigners(3)
    first = start_emulator(state_path=state)
    register_with = descriptor(signers, 2)
    with hwi_client(first) as client:  # auth_user pins TEST; displayaddress registers
        displayaddress(client, desc=register_with)
    first.stop()

    saved = json.loads(state.read_text())
    assert saved["version"] == 1 and saved["network_type"] == "TEST"
    assert saved["wallet"] == {"mnemonic": DEVICE_MNEMONIC, "passphrase": None}
    assert [m["threshold"] for m in saved["multisigs"]] == [2]
    assert stat.S_IMODE(state.stat().st_mode) == 0o600

    second = start_emulator(mnemonic=None, state_path=state)
    assert second.fingerprint == root_of(DEVICE_MNEMONIC).my_fingerprint.hex()
    with JadeAPI.create_serial(second.path, timeout=10) as jade:
        info = jade.get_version_info()
        assert (info["JADE_STATE"], info["JADE_NETWORKS"]) == ("READY", "TEST")
        assert len(jade.get_registered_multisigs()) == 1
    change = MultisigCoin(tuple(signers), 2, (1, 0))
    psbt = checkpoint_psbt(MultisigCoin(tuple(signers), 2, (0, 0)), new_coin=change)
    with hwi_client(second) as client:
        signtx(client, psbt.to_string())
    assert [o["change"] for o in second.prompts[-1].details["outputs"]] == [False, True]
    with pytest.raises(JadeError) as pinned:
        JadeClient(second.path, chain=Chain.MAIN, timeout=10)
    assert pinned.value.code == JadeError.NETWORK_MISMATCH


def test_temporary_wallets_are_not_saved(start_emulator, tmp_path):
    state = tmp_path / "jade.json"
    emu = start_emulator(mnemonic=None, state_path=state)
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        assert jade.set_seed(bytes(32))
        assert jade.set_mnemonic(DEVICE_MNEMONIC, temporary_wallet=True)
    assert json.loads(state.read_text())["wallet"] is None
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        assert jade.set_mnemonic(DEVICE_MNEMONIC, passphrase="extra words")
    assert json.loads(state.read_text())["wallet"] == {"mnemonic": DEVICE_MNEMONIC,
                                                      "passphrase": "extra words"}


def test_cli_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--mnemonic-file", "--state", "--require-registration",
                   "--confirm {approve,refuse,wait}", "--network {testnet,mainnet,localtest}"):
        assert option in out
    # Usage and input errors are one line through the command line's error layer.
    from anchorcli.main import main as cli

    assert cli(["emulator", "jade", "--confirm", "maybe"]) == 2
    assert cli(["emulator", "jade", "--port", "0", "--mnemonic-file", "/nonexistent/seed"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["bft-anchor emulator jade: argument --confirm: invalid choice: 'maybe' "
                   "(choose from 'approve', 'refuse', 'wait') "
                   "(see bft-anchor emulator jade --help)",
                   "bft-anchor emulator jade: --mnemonic-file /nonexistent/seed: no such file"]


def test_cli_serves_hwi_until_sigterm(tmp_path):
    seed_file = tmp_path / "seed.txt"
    seed_file.write_text(DEVICE_MNEMONIC + "\nTREZOR\n")
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.emulator.cli", "--port", "0", "--mnemonic-file",
         str(seed_file), "--state", str(state), "--network", "localtest"],
        stderr=subprocess.PIPE, text=True)
    try:
        banner = _wait_for_line(proc, r"Jade emulator on (tcp:\S+) fingerprint=(\w+)")
        path, fingerprint = banner.group(1), banner.group(2)
        root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(DEVICE_MNEMONIC, "TREZOR"))
        assert fingerprint == root.my_fingerprint.hex()
        client = JadeClient(path, chain=Chain.REGTEST, timeout=10)
        try:
            xpub = getxpub(client, "m/48h/1h/0h/2h")["xpub"]
        finally:
            client.close()
        assert xpub == root.derive("m/48h/1h/0h/2h").to_public(version=TPUB).to_base58()
        with pytest.raises(JadeError):  # --network localtest pinned TEST
            JadeClient(path, chain=Chain.MAIN, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert json.loads(state.read_text())["wallet"]["passphrase"] == "TREZOR"


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 20.0) -> re.Match:
    """Read the child's stderr in a thread (a buffered pipe defeats select())."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr],
                     daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            match = re.search(pattern, lines.get(timeout=0.2))
        except queue.Empty:
            if proc.poll() is not None:
                raise AssertionError(f"emulator exited with {proc.returncode}") from None
            continue
        if match:
            return match
    raise AssertionError("emulator did not start")
