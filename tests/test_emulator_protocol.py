"""Wire-level behaviour: framing errors, unknown methods, locking, reconnects, ping.

Raw-socket tests send what a broken host might; the rest use jadepy's JadeAPI
(the client vendored in HWI) so the replies are read exactly as HWI reads them.
"""

from __future__ import annotations

import socket
import threading

import cbor2
import pytest
from embit import bip32
from embit.networks import NETWORKS
from emulator_fixtures import (
    DEVICE_MNEMONIC,
    hwi_client,
    root_of,
)
from hwilib.common import Chain
from hwilib.devices.jade import JadeClient
from hwilib.devices.jadepy import JadeAPI, JadeError

pytest_plugins = ["emulator_fixtures"]  # the start_emulator fixture


class RawHost:
    """A bare TCP host that reads replies as jadepy does (cbor.load on the stream)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.stream = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, msg_id: str, method: str, params: object = None) -> dict:
        request = {"id": msg_id, "method": method}
        if params is not None:
            request["params"] = params
        self.send(cbor2.dumps(request))
        return self.read()

    def read(self) -> dict:
        return cbor2.load(self.stream)

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@pytest.fixture
def raw(start_emulator):
    emu = start_emulator(stale_timeout=0.3)
    host = RawHost(emu.port)
    yield host
    host.close()


def test_garbage_cbor_is_rejected_and_connection_keeps_serving(raw):
    raw.send(b"\x1c\x1c\x1c")  # 0x1c is not a valid CBOR initial byte
    assert raw.read() == {"id": "00", "error": {
        "code": JadeError.INVALID_REQUEST, "message": "Invalid RPC Request message", "data": "3"}}
    assert raw.call("1", "ping") == {"id": "1", "result": 0}
    assert raw.call("2", "get_version_info")["result"]["JADE_STATE"] == "READY"


def test_non_request_cbor_is_rejected_with_its_id(raw):
    raw.send(cbor2.dumps([1, 2, 3]))
    assert raw.read()["error"]["code"] == JadeError.INVALID_REQUEST
    reply = raw.call("7", 42)  # type: ignore[arg-type] - method must be text
    assert reply["id"] == "7" and reply["error"]["code"] == JadeError.INVALID_REQUEST
    reply = raw.call("x" * 17, "ping")  # ids are at most 16 characters
    assert reply["id"] == "00" and reply["error"]["code"] == JadeError.INVALID_REQUEST


def test_stale_partial_message_is_rejected_after_timeout(raw):
    whole = cbor2.dumps({"id": "9", "method": "ping"})
    raw.send(whole[:5])
    reply = raw.read()  # arrives after the 0.3 s stale timeout
    assert reply == {"id": "00", "error": {"code": JadeError.INVALID_REQUEST,
                                           "message": "Invalid RPC Request message",
                                           "data": "5"}}
    assert raw.call("10", "ping")["result"] == 0


def test_message_split_across_writes_is_reassembled(raw):
    whole = cbor2.dumps({"id": "11", "method": "get_version_info"})
    for i in range(0, len(whole), 3):
        raw.send(whole[i:i + 3])
    assert raw.read()["id"] == "11"


def test_unknown_and_out_of_flow_methods(start_emulator):
    emu = start_emulator()
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        with pytest.raises(JadeError) as unknown:
            jade._jadeRpc("frobnicate", {"x": 1})
        assert (unknown.value.code, unknown.value.message) == (
            JadeError.UNKNOWN_METHOD, "Unknown method")
        with pytest.raises(JadeError) as out_of_flow:
            jade._jadeRpc("get_extended_data", {"origid": "1", "orig": "sign_psbt",
                                                "seqnum": 2, "seqlen": 2})
        assert out_of_flow.value.code == JadeError.PROTOCOL_ERROR
        with pytest.raises(JadeError) as bad_params:
            jade._jadeRpc("get_xpub", ["not", "a", "map"])
        assert (bad_params.value.code, bad_params.value.message) == (
            JadeError.BAD_PARAMETERS, "Expecting parameters map")
        assert jade.ping() == 0  # still serving


def test_uninitialised_device_is_locked_until_a_wallet_is_set(start_emulator):
    emu = start_emulator(mnemonic=None)
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        info = jade.get_version_info()
        assert (info["JADE_STATE"], info["JADE_HAS_PIN"]) == ("UNINIT", False)
        with pytest.raises(JadeError) as locked:
            jade.get_xpub("testnet", [])
        assert locked.value.code == JadeError.HW_LOCKED
        with pytest.raises(JadeError) as unknown_while_locked:
            jade._jadeRpc("frobnicate")  # dashboard.c checks the lock first
        assert unknown_while_locked.value.code == JadeError.HW_LOCKED
        with pytest.raises(JadeError) as no_wallet:
            jade.auth_user("testnet")
        assert no_wallet.value.code == JadeError.HW_LOCKED

        assert jade.set_mnemonic(DEVICE_MNEMONIC) is True
        assert jade.get_version_info()["JADE_STATE"] == "READY"
        assert jade.auth_user("testnet") is True  # no pinserver round trip
    with hwi_client(emu) as client:  # HWI's constructor runs add_entropy + auth_user
        assert client.get_master_fingerprint() == root_of(DEVICE_MNEMONIC).my_fingerprint


def test_logout_locks_a_saved_wallet_and_auth_user_unlocks_it(start_emulator):
    emu = start_emulator()
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        assert jade.logout() is True
        assert jade.get_version_info()["JADE_STATE"] == "LOCKED"
        with pytest.raises(JadeError) as locked:
            jade.get_xpub("testnet", [])
        assert locked.value.code == JadeError.HW_LOCKED
        assert jade.auth_user("testnet") is True
        assert jade.get_version_info()["JADE_STATE"] == "READY"


def test_temporary_seed_wallet_is_forgotten_on_logout(start_emulator):
    emu = start_emulator(mnemonic=None)
    seed = bytes(range(64))
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        assert jade.set_seed(seed) is True
        xpub = jade.get_xpub("testnet", [])
        assert xpub == bip32.HDKey.from_seed(seed).to_public(
            version=NETWORKS["test"]["xpub"]).to_base58()
        assert jade.logout() is True
        assert jade.get_version_info()["JADE_STATE"] == "UNINIT"
        with pytest.raises(JadeError) as bad_seed:
            jade.set_seed(b"short")
        assert bad_seed.value.code == JadeError.BAD_PARAMETERS
        with pytest.raises(JadeError) as bad_words:
            jade.set_mnemonic("not a valid mnemonic at all")
        assert bad_words.value.code == JadeError.BAD_PARAMETERS


def test_many_sequential_hwi_connections(start_emulator):
    emu = start_emulator()
    fingerprints = set()
    for _ in range(8):
        client = JadeClient(emu.path, chain=Chain.TEST, timeout=10)
        fingerprints.add(client.get_master_fingerprint())
        client.close()
    assert fingerprints == {root_of(DEVICE_MNEMONIC).my_fingerprint}
    assert emu.method_counts["auth_user"] == 8


def test_ping_is_answered_while_the_device_waits_for_a_button(start_emulator):
    emu = start_emulator(confirm="wait")
    result: dict[str, object] = {}

    def sign() -> None:
        with hwi_client(emu) as client:
            result["sig"] = client.sign_message("hi", "m/44h/1h/0h/0/0")

    thread = threading.Thread(target=sign)
    thread.start()
    prompt = emu.confirm_hook.next_prompt(timeout=10)
    with JadeAPI.create_serial(emu.path, timeout=5) as jade:
        assert jade.ping() == 1  # busy handling a client message
    assert prompt.kind == "sign_message"
    prompt.approve()
    thread.join(timeout=10)
    assert isinstance(result["sig"], str) and len(result["sig"]) == 88


def test_no_private_key_material_in_any_reply(start_emulator):
    emu = start_emulator()
    words = set(DEVICE_MNEMONIC.split())
    with JadeAPI.create_serial(emu.path, timeout=10) as jade:
        replies = [jade.get_version_info(), jade.get_xpub("testnet", []),
                   jade.get_xpub("mainnet", [0x80000000])]
        for method in ("debug_get_mnemonic", "get_xprv", "export_seed"):
            with pytest.raises(JadeError) as err:
                jade._jadeRpc(method)
            assert err.value.code == JadeError.UNKNOWN_METHOD
    text = repr(replies)
    assert "prv" not in text and not any(f" {w} " in text for w in words)
    assert all(not bip32.HDKey.from_base58(x).is_private for x in replies[1:])
    assert "prv" not in repr(emu.device.keychain)
