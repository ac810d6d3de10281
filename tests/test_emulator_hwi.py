"""The Jade emulator as HWI sees it: enumerate, fingerprint, xpubs, addresses, messages.

Everything goes through HWI's unchanged code (hwilib.commands and JadeClient),
and the expected values come from embit on the same mnemonic.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from embit import compact, script
from embit.networks import NETWORKS
from embit.util import secp256k1
from emulator_fixtures import (
    DEVICE_MNEMONIC,
    TPUB,
    cosigners,
    descriptor,
    hwi_client,
    root_of,
)
from hwilib.commands import displayaddress, getxpub, signmessage
from hwilib.commands import enumerate as hwi_enumerate
from hwilib.common import AddressType, Chain

from appliance.emulator import JadeEmulator

pytest_plugins = ["emulator_fixtures"]  # the start_emulator fixture

HWI = str(Path(sys.executable).with_name("hwi"))
ROOT = root_of(DEVICE_MNEMONIC)
FINGERPRINT = ROOT.my_fingerprint.hex()


@pytest.fixture
def emulator_on_30121():
    """The emulator on the port HWI probes (skipped if something else holds it)."""
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", 30121))
    except OSError:
        pytest.skip("port 30121 is in use")
    finally:
        probe.close()
    emu = JadeEmulator(mnemonic=DEVICE_MNEMONIC)
    emu.start()
    yield emu
    emu.stop()


@pytest.mark.xdist_group("hwi_emulator_port_30121")  # with test_device_cli.py under xdist
def test_enumerate_finds_emulator_and_cli_agrees(emulator_on_30121):
    found = [d for d in hwi_enumerate(chain=Chain.TEST, allow_emulators=True)
             if d["type"] == "jade"]
    assert [(d["path"], d["model"], d.get("fingerprint")) for d in found] == [
        ("tcp:127.0.0.1:30121", "jade_simulator", FINGERPRINT)]

    out = subprocess.run([HWI, "--emulators", "--chain", "test", "enumerate"],
                         capture_output=True, text=True, timeout=60, check=True)
    devices = [d for d in json.loads(out.stdout) if d["type"] == "jade"]
    assert [d["fingerprint"] for d in devices] == [FINGERPRINT]

    out = subprocess.run([HWI, "-f", FINGERPRINT, "--emulators", "--chain", "test",
                          "getxpub", "m/48h/1h/0h/2h"],
                         capture_output=True, text=True, timeout=60, check=True)
    expected = ROOT.derive("m/48h/1h/0h/2h").to_public(version=TPUB).to_base58()
    assert json.loads(out.stdout) == {"xpub": expected}


def test_fingerprint_is_parent_fingerprint_of_m_0h(start_emulator):
    emu = start_emulator()
    with hwi_client(emu) as client:
        assert client.get_master_fingerprint().hex() == FINGERPRINT
    assert emu.fingerprint == FINGERPRINT


@pytest.mark.parametrize("path", ["m", "m/0h", "m/48h/1h/0h/2h", "m/84h/1h/0h/0/7",
                                  "m/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16"])
def test_getxpub_matches_embit(start_emulator, path):
    emu = start_emulator()
    with hwi_client(emu) as client:
        xpub = getxpub(client, path)["xpub"]
    assert xpub == ROOT.derive(path).to_public(version=TPUB).to_base58()


def test_mainnet_xpub_version_and_no_private_keys(start_emulator):
    emu = start_emulator()
    with hwi_client(emu, chain=Chain.MAIN) as client:
        xpub = getxpub(client, "m")["xpub"]
    assert xpub == ROOT.to_public(version=NETWORKS["main"]["xpub"]).to_base58()
    assert xpub.startswith("xpub") and "prv" not in xpub


def test_path_longer_than_16_is_refused(start_emulator):
    from hwilib.errors import BadArgumentError

    emu = start_emulator()
    with hwi_client(emu) as client, pytest.raises(BadArgumentError, match="valid path"):
        getxpub(client, "m" + "/1" * 17)


@pytest.mark.parametrize("addr_type,build", [
    (AddressType.WIT, script.p2wpkh),
    (AddressType.SH_WIT, lambda pub: script.p2sh(script.p2wpkh(pub))),
    (AddressType.LEGACY, script.p2pkh),
])
def test_display_singlesig_address(start_emulator, addr_type, build):
    emu = start_emulator()
    path = "m/84h/1h/0h/0/3"
    with hwi_client(emu, chain=Chain.REGTEST) as client:
        address = displayaddress(client, path=path, addr_type=addr_type)["address"]
    assert address == build(ROOT.derive(path).key.get_public_key()).address(NETWORKS["regtest"])
    assert emu.prompts[-1].kind == "get_receive_address"
    assert emu.prompts[-1].details["address"] == address


def test_display_multisig_address_registers_wallet_with_hwi_name(start_emulator):
    from hwilib.devices.jade import JadeClient

    emu = start_emulator()
    signers = cosigners(3)
    with hwi_client(emu) as client:
        address = displayaddress(client, desc=descriptor(signers, 2, 0, 5))["address"]
    keys = sorted(s.pubkey((0, 5)) for s in signers)
    ws = script.Script(b"\x52" + b"".join(b"\x21" + k for k in keys) + b"\x53\xae")
    assert address == script.p2wsh(ws).address(NETWORKS["test"])
    name = JadeClient._get_multisig_name(
        "wsh(multi(k))", 2, [(s.fingerprint, [48 | 1 << 31, 1 | 1 << 31, 1 << 31, 2 | 1 << 31])
                             for s in signers])
    records = emu.device.registry.all()
    assert [(r.name, r.threshold, len(r.signers), r.sorted) for r in records] == [
        (name, 2, 3, True)]
    assert [p.kind for p in emu.prompts] == ["register_multisig", "get_receive_address"]


def test_signmessage_recovers_to_the_derived_key(start_emulator):
    emu = start_emulator()
    path, message = "m/44h/1h/0h/0/0", "checkpoint 42"
    with hwi_client(emu) as client:
        signature = signmessage(client, message, path)["signature"]
    raw = base64.b64decode(signature)
    assert len(raw) == 65 and 31 <= raw[0] <= 34  # compressed-key header
    data = b"\x18Bitcoin Signed Message:\n" + compact.to_bytes(len(message)) + message.encode()
    digest = hashlib.sha256(hashlib.sha256(data).digest()).digest()
    rec = secp256k1.ecdsa_recoverable_signature_parse_compact(raw[1:], raw[0] - 31)
    recovered = secp256k1.ec_pubkey_serialize(secp256k1.ecdsa_recover(rec, digest))
    assert recovered == ROOT.derive(path).sec()
    assert emu.prompts[-1].kind == "sign_message"
    assert emu.prompts[-1].details == {"message": message, "path": "m/44h/1h/0h/0/0"}
