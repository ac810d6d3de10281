"""The appliance's HWI signer against the Jade emulator, through HWI's own client code."""

from __future__ import annotations

import pytest
from embit import bip39
from embit.networks import NETWORKS
from embit.psbt import PSBT

from anchornode.bftsim import SimulatedBFTChain
from appliance.emulator import JadeEmulator
from appliance.emulator.confirm import WaitForButtons
from appliance.journal import Journal
from appliance.policy import Limits
from appliance.signers.base import SignerError
from appliance.signers.hwi import HWISigner
from appliance.signers.software import SoftwareSigner
from appliance.signing import Appliance
from bftanchor.deployment import Deployment
from bftanchor.descriptor import EpochMultisig
from bftanchor.payload import Payload
from bftanchor.template import Coin, Outpoint, build_checkpoint_psbt

MNEMONICS = [bip39.mnemonic_from_bytes(bytes([i + 1]) * 16) for i in range(20)]


def start(mnemonic: str, **kw) -> JadeEmulator:
    emu = JadeEmulator(port=0, mnemonic=mnemonic, network=kw.pop("network", "testnet"), **kw)
    emu.start()
    return emu


@pytest.fixture
def world():
    """v0 on an emulator through HWI, v1..v3 in software; epoch 0's record and a coin."""
    emus: list[JadeEmulator] = []

    def make(n: int = 4, **kw):
        sim = SimulatedBFTChain.create(n, 100)
        emu = start(MNEMONICS[0], **kw)
        emus.append(emu)
        hwi = HWISigner(device_type="jade", device_path=emu.path)
        signers = {"v0": hwi}
        for i, v in enumerate(sim.validators[1:], start=1):
            signers[v.id] = SoftwareSigner.from_mnemonic(MNEMONICS[i])
        rec = sim.make_record(0, {vid: s.pow_key(0) for vid, s in signers.items()})
        ms = EpochMultisig(rec)
        coin = Coin(Outpoint("cd" * 32, 0), 5_000_000, 0)
        return sim, emu, hwi, signers, rec, ms, coin

    yield make
    for e in emus:
        e.stop()


def checkpoint_psbt(sim, ms, coin, round_=5):
    qc = sim.qc(0, round_)
    payload = Payload(0, qc.round, qc.commit_state_id)
    return qc, build_checkpoint_psbt(coin, ms, payload, ms, 600)


def test_pow_key_comes_from_the_device(world):
    sim, emu, hwi, signers, rec, ms, coin = world()
    assert hwi.fingerprint.hex() == emu.fingerprint
    software_twin = SoftwareSigner.from_mnemonic(MNEMONICS[0])
    assert hwi.pow_key(3) == software_twin.pow_key(3)


def test_registers_before_signing_and_output_is_recognised(world):
    sim, emu, hwi, signers, rec, ms, coin = world(require_registration=True)
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    signed = hwi.sign(psbt, ms)
    sig_keys = set(signed.inputs[0].partial_sigs)
    assert sig_keys == {ms.key_for("v0").pubkey}
    regs = emu.device.registry
    assert len(regs.all() if hasattr(regs, "all") else regs) == 1
    sign_prompt = [p for p in emu.prompts if p.kind == "sign_psbt"][-1]
    out1 = sign_prompt.details["outputs"][1]
    assert out1["validated"] is True  # the coin's output is the registered wallet's
    assert sign_prompt.details["outputs"][0]["shown"] is True  # OP_RETURN always shown


def test_wallet_is_registered_under_the_deployments_name_and_signing_finds_it(world):
    from appliance.emulator.multisig import name_valid
    from appliance.share import registered_on_device

    sim, emu, hwi, signers, rec, ms, coin = world(require_registration=True)
    dep = Deployment("litecoin-regtest", b"BFTA", coin, rec, 10)
    hwi.wallet_tag = dep.device_tag
    name = dep.wallet_name(0)
    assert name == "BFTAcdcd-e0" and name_valid(name)
    assert registered_on_device(hwi, ms) is False
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    signed = hwi.sign(psbt, ms)  # registers first, then signs
    assert set(signed.inputs[0].partial_sigs) == {ms.key_for("v0").pubkey}
    assert [r.name for r in emu.device.registry.all()] == [name]
    (reg,) = [p for p in emu.prompts if p.kind == "register_multisig"]
    assert reg.details["multisig_name"] == name  # what the operator approves on the device
    sign_prompt = [p for p in emu.prompts if p.kind == "sign_psbt"][-1]
    assert sign_prompt.details["outputs"][1]["validated"] is True  # found by content
    assert registered_on_device(hwi, ms) is True
    # A second signer (a restarted appliance) re-registers the same record silently.
    again = HWISigner(device_type="jade", device_path=emu.path, wallet_tag=dep.device_tag)
    again.register(ms)
    assert len([p for p in emu.prompts if p.kind == "register_multisig"]) == 1


def test_a_wallet_hwi_registered_under_its_own_name_is_not_registered_again(world):
    from hwilib import commands

    sim, emu, hwi, signers, rec, ms, coin = world(require_registration=True)
    with hwi._client() as client:  # HWI's own registration, under its hash name
        shown = commands.displayaddress(client, desc=ms.descriptor())["address"]
    (old,) = emu.device.registry.all()
    assert old.name.startswith("hwi")
    hwi.wallet_tag = "BFTAcdcd"
    assert hwi.register(ms) == shown  # the device's address under the old name, checked
    assert [r.name for r in emu.device.registry.all()] == [old.name]
    assert len([p for p in emu.prompts if p.kind == "register_multisig"]) == 1
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    assert set(hwi.sign(psbt, ms).inputs[0].partial_sigs) == {ms.key_for("v0").pubkey}


def test_a_foreign_wallet_under_the_signers_name_is_overwritten_not_trusted(world):
    """A record under this deployment's name holding other keys is not taken for the
    epoch's wallet: the device overwrites it (its user sees "overwriting") and the address
    it then shows is the epoch's."""
    sim, emu, hwi, signers, rec, ms, coin = world()
    hwi.wallet_tag = "BFTAcdcd"
    strangers = {vid: SoftwareSigner.from_mnemonic(MNEMONICS[10 + i])
                 for i, vid in enumerate(signers)}
    other = sim.make_record(0, {vid: (hwi if vid == "v0" else strangers[vid]).pow_key(0)
                                for vid in signers})
    with hwi._client() as client:
        from appliance.signers.hwi import jade_register

        jade_register(client, hwi.wallet_name(0), EpochMultisig(other))
    assert hwi.register(ms) == ms.address(NETWORKS["test"])
    regs = [p.details for p in emu.prompts if p.kind == "register_multisig"]
    assert [r["overwriting"] for r in regs] == [False, True]
    (held,) = emu.device.registry.all()
    assert held.name == "BFTAcdcd-e0" and sorted(s.xpub for s in held.signers) == sorted(
        v.pow_key.split("]")[1] for v in rec.validators)


@pytest.mark.parametrize("tag,epoch", [
    ("BFTAcdcd", 0), ("BFTAcdcd", 12345), ("BFTAcdcd", 10**9), ("x" * 40, 7),
    ("BFTAcdcd", 10**20), ("", 3),
])
def test_device_wallet_names_fit_the_jade_limit(tag, epoch):
    from appliance.emulator.multisig import name_valid
    from bftanchor.deployment import DEVICE_NAME_MAX, device_wallet_name

    name = device_wallet_name(tag, epoch)
    assert len(name) <= DEVICE_NAME_MAX and name_valid(name)
    if epoch < 10**13:
        assert name.endswith(f"e{epoch}")
        assert device_wallet_name(tag, epoch + 1) != name


def test_deployment_tag_of_an_unprintable_magic_is_hex(world):
    sim, emu, hwi, signers, rec, ms, coin = world()
    dep = Deployment("litecoin-regtest", b"\x00\xff-\x01", coin, rec, 10)
    assert dep.device_tag == "00ffcdcd" and dep.wallet_name(2) == "00ffcdcd-e2"


def test_unregistered_multisig_refused_under_require_registration(world):
    from hwilib import commands

    sim, emu, hwi, signers, rec, ms, coin = world(require_registration=True)
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    with hwi._client() as client, pytest.raises(Exception) as exc:
        commands.signtx(client, psbt.to_string())
    assert "regist" in str(exc.value).lower()


def test_unregistered_multisig_is_shown_as_external_otherwise(world):
    from hwilib import commands

    sim, emu, hwi, signers, rec, ms, coin = world()
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    with hwi._client() as client:
        out = commands.signtx(client, psbt.to_string())
    assert out["signed"]
    prompt = [p for p in emu.prompts if p.kind == "sign_psbt"][-1]
    assert prompt.details["outputs"][1]["validated"] is False
    assert prompt.details["outputs"][1]["shown"] is True


def test_refusal_on_device_reaches_caller_and_journal_signs_nothing(world, tmp_path):
    sim, emu, hwi, signers, rec, ms, coin = world(confirm="refuse")
    dep = Deployment("litecoin-regtest", b"BFTA", coin, rec, 10)
    app = Appliance(dep, Journal(tmp_path / "j.sqlite", coin), hwi, Limits())
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    out = app.handle_sign(psbt.to_string(), qc.to_json(), [rec.to_json()])
    assert not out.signed
    assert any("refused on device" in r for r in out.reasons), out.reasons
    # The reservation stays (the same tx may be retried) but no signature was stored.
    assert all(e.signed_psbt is None for e in app.journal.state().entries)
    assert app.journal.decisions(1)[0]["decision"] == "refused"


def test_wait_for_buttons_then_approve(world):
    import threading

    buttons = WaitForButtons(timeout=20)
    sim, emu, hwi, signers, rec, ms, coin = world(confirm=buttons)
    result = {}
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    t = threading.Thread(target=lambda: result.update(psbt=hwi.sign(psbt, ms)))
    t.start()
    kinds: list[str] = []
    seen: list[object] = []
    while "sign_psbt" not in kinds and len(kinds) < 5:
        prompt = buttons.next_prompt(timeout=20)
        if any(prompt is p for p in seen):  # approved, not yet taken off the screen
            continue
        seen.append(prompt)
        prompt.approve()
        kinds.append(prompt.kind)
    t.join(20)
    # Registration needs a press of its own before the signature.
    assert kinds[0] == "register_multisig" and kinds[-1] == "sign_psbt" and "psbt" in result


def test_bad_signature_from_device_is_caught(world, monkeypatch, tmp_path):
    """The appliance verifies what the device returns: a tampered signature never leaves,
    the refusal says so, and the journal keeps the reservation and no signature."""
    from hwilib import commands

    sim, emu, hwi, signers, rec, ms, coin = world()
    dep = Deployment("litecoin-regtest", b"BFTA", coin, rec, 10)
    app = Appliance(dep, Journal(tmp_path / "j.sqlite", coin), hwi, Limits())
    real = commands.signtx

    def tampered(client, b64):
        out = real(client, b64)
        p = PSBT.from_string(out["psbt"])
        for pub, sig in p.inputs[0].partial_sigs.items():
            bad = bytearray(sig)
            bad[12] ^= 0x01
            p.inputs[0].partial_sigs[pub] = bytes(bad)
        return {"psbt": p.to_string(), "signed": True}

    monkeypatch.setattr(commands, "signtx", tampered)
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    out = app.handle_sign(psbt.to_string(), qc.to_json(), [rec.to_json()])
    assert not out.signed and out.psbt is None
    assert out.reasons == [out.reasons[0]] and out.reasons[0].startswith(
        "signer: the signer returned a bad signature: signature by"), out.reasons
    assert all(e.signed_psbt is None for e in app.journal.state().entries)
    assert len(app.journal.state().entries) == 1


def test_wrong_network_is_refused():
    emu = start(MNEMONICS[0], network="mainnet")  # a mainnet device, a testnet deployment
    try:
        with pytest.raises(SignerError, match="refused the network"):
            HWISigner(device_type="jade", device_path=emu.path, coin_type=1)
        assert emu.method_counts.get("sign_psbt", 0) == 0
    finally:
        emu.stop()


def test_fifteen_keys_round_trip_through_chunked_reply(world):
    sim, emu, hwi, signers, rec, ms, coin = world(n=15)
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    signed = hwi.sign(psbt, ms)
    assert ms.key_for("v0").pubkey in signed.inputs[0].partial_sigs
    assert emu.method_counts.get("get_extended_data", 0) >= 1


def test_device_not_found_is_a_clear_error():
    with pytest.raises(SignerError, match="cannot connect|not found|connection"):
        HWISigner(device_type="jade", device_path="tcp:127.0.0.1:1")


@pytest.mark.parametrize("sighash", [0x02, 0x03, 0x81, 0x83])
def test_only_sighash_all_is_signed_on_every_signer(world, monkeypatch, sighash):
    """Issue 10 item 6 (BIP174): an input asking for another sighash type is not signed,
    by the software signer nor through HWI, and the device is never asked."""
    from hwilib import commands

    sim, emu, hwi, signers, rec, ms, coin = world()
    qc, psbt = checkpoint_psbt(sim, ms, coin)
    psbt.inputs[0].sighash_type = sighash
    calls: list = []
    monkeypatch.setattr(commands, "signtx", lambda *a, **k: calls.append(a))
    for signer in signers.values():
        with pytest.raises(SignerError, match=f"sighash type {sighash:#x}, expected SIGHASH_ALL"):
            signer.sign(psbt, ms)
    assert calls == []
