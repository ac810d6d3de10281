"""The operator console under Textual's pilot, against an appliance on the Jade emulator.

Each test drives the keys an operator would press and then checks the appliance itself
(its journal, its queue, the emulator's registry), not just the screen.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from test_tui_world import World
from textual import events
from textual.keys import _character_to_key
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from bftanchor.link.messages import MsgType
from tui.app import OperatorConsole
from tui.backend import RemoteBackend, jade_registration_name
from tui.ceremony import ARM, DONE, FINGERPRINT, KEY, RECORD, REGISTER
from tui.screens.epochs import EpochsScreen
from tui.widgets import ConfirmDialog, ReasonDialog

SIZE = (160, 50)


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.close()


def console(backend: Any, **kw: Any) -> tuple[OperatorConsole, list[str]]:
    """An app that polls only when told to, and a list of every notification it shows."""
    kw.setdefault("poll", 0)
    kw.setdefault("device_poll", 0)
    app = OperatorConsole(backend, **kw)
    seen: list[str] = []
    notify = app.notify

    def recording(message: str, **kwargs: Any) -> None:
        seen.append(message)
        notify(message, **kwargs)

    app.notify = recording  # type: ignore[method-assign]
    return app, seen


def text_of(app: OperatorConsole, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test without an asyncio plugin (the pilot needs a running loop)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


async def settle(pilot: Pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def until(pilot: Pilot, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await pilot.pause(0.05)


async def type_into(pilot: Pilot, text: str) -> None:
    """Type text into the focused Input: one key event per character, in order, as a
    terminal sends them, then wait until the Input holds it. (Pilot.press waits for
    Textual to go idle twice per key, re-rendering the screen after every character.)"""
    app = pilot.app
    field = app.focused
    assert isinstance(field, Input), f"typing into {field!r}, not an Input"
    expected = field.value[: field.cursor_position] + text + field.value[field.cursor_position:]
    for char in text:
        key = events.Key(_character_to_key(char), char)
        key.set_sender(app)
        app.post_message(key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while field.value != expected:
        assert loop.time() < deadline, f"typed {text!r}, the Input holds {field.value!r}"
        await pilot.pause()


async def confirm(pilot: Pilot, key: str, answer: str = "y") -> None:
    await pilot.press(key)
    await pilot.pause()
    if isinstance(pilot.app.screen, ReasonDialog):  # refusing: enter refuses, escape cancels
        await pilot.press("enter" if answer == "y" else "escape")
        await settle(pilot)
        return
    assert isinstance(pilot.app.screen, ConfirmDialog), f"{key} asked nothing"
    await pilot.press(answer)
    await settle(pilot)


def signed_entries(world: World) -> list:
    return [e for e in world.appliance.journal.state().signed if e.signed_psbt]


@sync
async def test_approving_signs_and_the_request_leaves_the_queue(world: World) -> None:
    request = world.request(5)
    kind, _ = world.submit(request)
    assert kind == MsgType.PENDING
    app, seen = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#requests", DataTable)
        assert table.row_count == 1
        detail = text_of(app, "#request-detail")
        assert "POLICY ALLOWS" in detail and "OP_RETURN payload" in detail
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")  # no: nothing happens
        await settle(pilot)
        assert world.service.queue.pending() and not signed_entries(world)
        await confirm(pilot, "a")
        assert not world.service.queue.pending()
        assert table.row_count == 0
        assert any(m.startswith("signed ") for m in seen), seen
    (entry,) = signed_entries(world)
    assert world.appliance.journal.decisions(1)[0]["decision"] == "signed"
    # The node's next ask is answered with the signature, from the queue's outcome.
    kind, reply = world.submit(request)
    assert kind == MsgType.SIGN_REPLY and reply["psbt"] == entry.signed_psbt


@sync
async def test_refusing_journals_a_refusal_and_signs_nothing(world: World) -> None:
    request = world.request(5)
    world.submit(request)
    app, seen = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ReasonDialog), "r asked nothing"
        await pilot.press("escape")  # cancelled: nothing refused
        await settle(pilot)
        assert world.service.queue.pending()
        await pilot.press("r")
        await pilot.pause()
        await type_into(pilot, "fee too high")
        await pilot.press("enter")
        await settle(pilot)
        assert not world.service.queue.pending()
    last = world.appliance.journal.decisions(1)[0]
    assert last["decision"] == "refused"
    assert last["detail"]["reasons"] == ["refused by the operator: fee too high"]
    assert world.appliance.journal.state().entries == ()
    assert world.emu.method_counts.get("sign_psbt", 0) == 0
    kind, reply = world.submit(request)
    assert kind == MsgType.REFUSAL and reply["reasons"] == ["refused by the operator"]


@sync
async def test_a_request_the_policy_refuses_cannot_be_approved(world: World) -> None:
    # Refused by the policy on arrival: it never enters the queue.
    kind, reply = world.submit(world.request(5, fee=200_000))
    assert kind == MsgType.REFUSAL and any("exceeds the limit" in r for r in reply["reasons"])
    # Two honest-looking requests for one round: once one is signed, the other would
    # equivocate; the console keeps it but disables approval and says why.
    world.submit(world.request(7))
    world.submit(world.request(7))
    assert len(world.service.queue.pending()) == 2
    app, seen = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        assert app.screen.query_one("#requests", DataTable).row_count == 2
        await confirm(pilot, "a")
        assert len(signed_entries(world)) == 1
        (left,) = app.data.pending
        assert not left.verdict_ok
        assert any("equivocation" in r for r in left.reasons), left.reasons
        assert app.screen.check_action("approve", ()) is None  # shown disabled
        detail = text_of(app, "#request-detail")
        assert "POLICY REFUSES" in detail and "equivocation" in detail
        await pilot.press("a")  # a disabled binding: no dialog
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmDialog)
        app.screen.action_approve()  # even called directly, it refuses and says why
        await pilot.pause()
        assert any("cannot approve" in m and "equivocation" in m for m in seen), seen
        await confirm(pilot, "r")  # it can still be refused
    assert len(signed_entries(world)) == 1
    assert not world.service.queue.pending()


@sync
async def test_mode_switch_asks_first_and_is_journaled(world: World) -> None:
    app, seen = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await confirm(pilot, "m", "n")
        assert world.service.queue.mode == "manual"
        await confirm(pilot, "m", "y")
        assert world.service.queue.mode == "auto"
        assert app.data.status is not None and app.data.status.mode == "auto"
    last = world.appliance.journal.decisions(1)[0]
    assert last["decision"] == "approval-mode"
    assert (last["detail"]["from"], last["detail"]["to"]) == ("manual", "auto")
    # In auto mode the policy alone decides: the next request is signed at once.
    kind, _ = world.submit(world.request(9))
    assert kind == MsgType.SIGN_REPLY


@sync
async def test_history_is_newest_first_and_searchable(world: World) -> None:
    a = world.request(5)
    world.submit(a)
    world.service.queue.approve(world.service.queue.pending()[0].id)
    world.submit(world.request(6, fee=500_000))  # refused by the policy
    txid = signed_entries(world)[0].txid
    app, _ = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.query_one("#history", DataTable)
        assert table.row_count == 2
        first = table.get_row_at(0)
        assert str(first[2]) == "refused" and first[4] == "6"
        detail = text_of(app, "#history-detail")
        assert "exceeds the limit" in detail
        await pilot.press("slash")
        await type_into(pilot, txid[:10])
        await pilot.pause()
        assert table.row_count == 1 and str(table.get_row_at(0)[2]) == "signed"
        assert txid in text_of(app, "#history-detail")
        search = app.screen.query_one("#history-search", Input)
        search.value = "r:6"
        await pilot.pause()
        assert table.row_count == 1 and str(table.get_row_at(0)[2]) == "refused"
        search.value = "e:0 r:99"
        await pilot.pause()
        assert table.row_count == 0


@sync
async def test_rotation_ceremony_registers_the_next_multisig_and_the_handover_signs(
    world: World,
) -> None:
    # Before the ceremony the appliance does not know epoch 1: a handover is refused.
    kind, reply = world.submit(world.request(90, handover=True))
    assert kind == MsgType.REFUSAL, reply
    record_file = world.write_record()
    name1 = world.deployment.wallet_name(1)  # deployment and epoch, not HWI's hash name
    assert name1.endswith("-e1") and name1 != jade_registration_name(world.rec1)
    app, seen = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, EpochsScreen)
        c = screen.ceremony
        assert c is not None and c.step == KEY and c.next_epoch == 1
        # Out of order: register and arm are disabled and do nothing.
        for key in ("g", "i"):
            await pilot.press(key)
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmDialog) and c.step == KEY
        # (a) the key, read from the device.
        await pilot.press("k")
        await settle(pilot)
        assert c.step == RECORD and c.my_key == world.hwi.pow_key(1)
        # (b) a bad path first, then the certified record.
        path_input = screen.query_one("#record-path", Input)
        path_input.value = str(world.tmp / "nope.json")
        await pilot.press("enter")
        await pilot.pause()
        assert c.step == RECORD and any("cannot read" in m for m in seen)
        path_input.value = str(record_file)
        await pilot.press("enter")
        await pilot.pause()
        assert c.step == FINGERPRINT and c.record == world.rec1 and c.holds_key
        # (c) a wrong fingerprint, then the right one.
        fp_input = screen.query_one("#fingerprint-input", Input)
        assert fp_input.has_focus
        await type_into(pilot, "12345678")
        await pilot.press("enter")
        await pilot.pause()
        assert c.step == FINGERPRINT and any("does not match" in m for m in seen)
        fp_input.value = c.fingerprint or ""
        await pilot.press("enter")
        await pilot.pause()
        assert c.step == REGISTER
        assert name1 not in {r.name for r in world.emu.device.registry.all()}
        # (d) register on the device.
        await confirm(pilot, "g")
        assert c.step == ARM
        assert name1 in {r.name for r in world.emu.device.registry.all()}
        assert 1 not in world.appliance.held_records()
        # (e) arm.
        await confirm(pilot, "i")
        assert c.step == DONE and 1 in world.appliance.held_records()
        # The device screen lists the new wallet by epoch.
        await pilot.press("3")
        await app.refresh_device()
        await pilot.pause()
        regs = {r["name"]: r["epoch"] for r in app.data.device.registered or []}
        assert regs.get(name1) == 1
        table = app.screen.query_one("#registered", DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        k, n = world.rec1.threshold, world.rec1.n
        assert ["epoch 1", c.fingerprint, name1, f"{k} of {n}", "yes"] in rows, rows
        # The handover now waits for approval, then signs.
        kind, reply = world.submit(world.request(91, handover=True))
        assert kind == MsgType.PENDING, reply
        await pilot.press("1")
        await app.refresh_data()
        await pilot.pause()
        (req,) = app.data.pending
        assert req.handover and req.verdict_ok
        await confirm(pilot, "a")
    (entry,) = signed_entries(world)
    assert entry.handover and entry.dest_epoch == 1


@sync
async def test_unplugging_the_device_is_a_notification_not_a_crash(world: World) -> None:
    world.submit(world.request(5))
    app, seen = console(world.backend, device_poll=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.data.device is not None and app.data.device.connected)
        world.emu.stop()
        await until(pilot, lambda: not app.data.device.connected)
        assert any("device disconnected" in m for m in seen), seen
        assert "disconnected" in text_of(app, "#status-bar")
        # Approving now is stopped before the queue would drop the request as refused.
        await confirm(pilot, "a")
        assert world.service.queue.pending() and not signed_entries(world)
        assert any("device check before signing failed" in m for m in seen), seen
        for key in ("2", "3", "4", "1"):
            await pilot.press(key)
            await pilot.pause()
        assert app.is_running
        await pilot.press("3")
        await app.refresh_device()
        await pilot.pause()
        assert "not connected" in text_of(app, "#device-info")


@sync
async def test_a_link_that_cannot_be_opened_is_shown(world: World, tmp_path: Path) -> None:
    world.backend.serve_link(str(tmp_path / "no-such-tty"))
    app, seen = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: world.backend.link_error is not None)
        await app.refresh_data()
        await pilot.pause()
        assert any("no-such-tty" in m for m in seen), seen
        assert "down" in text_of(app, "#status-bar")
        assert app.is_running


@sync
async def test_attached_to_a_running_appliance_through_its_control_socket(
    world: World, tmp_path: Path
) -> None:
    sock = tmp_path / "control.sock"
    server = world.service.serve_control(sock)
    try:
        backend = RemoteBackend(sock, world.deployment, world.hwi, "v0")
        world.submit(world.request(5))
        app, seen = console(backend)
        async with app.run_test(size=SIZE) as pilot:
            assert app.data.records.keys() == {0}
            (req,) = app.data.pending
            assert req.verdict_ok and req.outputs and req.valid_signers >= 3
            await confirm(pilot, "a")
            assert not world.service.queue.pending()
            assert app.data.status is not None and app.data.status.last_signature
        assert len(signed_entries(world)) == 1
        server.shutdown()
        server.server_close()  # the appliance is gone: its socket refuses
        app, seen = console(backend)
        async with app.run_test(size=SIZE) as pilot:
            assert any("control socket" in m for m in seen), seen  # gone: shown, not raised
            assert app.is_running
    finally:
        server.server_close()


@sync
async def test_device_screen_flags_a_wallet_named_as_an_epochs_but_holding_other_keys(
    world: World,
) -> None:
    """A name is only a claim: a registration under epoch 0's name whose keys are not epoch
    0's is shown as NOT epoch 0, never as the epoch's wallet."""
    import hashlib

    from appliance.signers.hwi import jade_register
    from appliance.signers.software import SoftwareSigner
    from bftanchor.descriptor import EpochMultisig

    keys = {vid: SoftwareSigner.from_seed(hashlib.sha256(f"stranger {vid}".encode()).digest())
            .pow_key(0) for vid in world.others}
    keys["v0"] = world.hwi.pow_key(0)
    forged = world.sim.make_record(0, keys)
    name0 = world.deployment.wallet_name(0)
    with world.hwi._client() as client:
        jade_register(client, name0, EpochMultisig(forged))
    app, seen = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await app.refresh_device()
        await pilot.pause()
        (reg,) = app.data.device.registered or []
        assert reg["name"] == name0 and reg["epoch"] is None and reg["not_epoch"] == 0
        table = app.screen.query_one("#registered", DataTable)
        row = [str(c) for c in table.get_row_at(0)]
        assert row[0] == "NOT epoch 0" and row[2] == name0, row
        # Registering the real epoch 0 wallet overwrites it (the device asks its user), and
        # the screen then lists it as epoch 0's.
        world.hwi.register(world.ms0)
        await app.refresh_device()
        await pilot.pause()
        (reg,) = app.data.device.registered or []
        assert reg["epoch"] == 0 and "not_epoch" not in reg
