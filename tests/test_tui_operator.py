"""What the console guards (issue 15): each point driven through Textual's pilot.

The appliance is the console's test world (HWI on the Jade emulator, manual approval);
each test presses the keys an operator would and checks the screen and the appliance.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_tui_app import SIZE, confirm, console, settle, sync, text_of, type_into, until
from test_tui_world import World
from textual.widgets import DataTable, Input

from tui.backend import BackendError, RemoteBackend
from tui.ceremony import FINGERPRINT, REGISTER
from tui.decode import wallet_fingerprint
from tui.screens.epochs import EpochsScreen
from tui.widgets import ConfirmDialog, HelpScreen


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.close()


def screen_text(app) -> str:
    return "\n".join(str(s.content) for s in app.screen.query("Static"))


@sync
async def test_the_fingerprint_is_typed_first_and_a_mismatch_warns_of_forgery(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = world.write_record()
    # The operator types the path relative to where the console runs: a few keys, not a
    # 70-character temporary path.
    monkeypatch.chdir(record.parent)
    app, seen = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4", "k")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, EpochsScreen)
        await type_into(pilot, record.name)
        await pilot.press("enter")
        await settle(pilot)
        c = screen.ceremony
        assert c is not None and c.step == FINGERPRINT
        expected = c.fingerprint or ""
        assert expected and expected not in screen_text(app)  # not given away
        assert "hidden until you type" in text_of(app, "#ceremony-detail")
        fp_input = screen.query_one("#fingerprint-input", Input)
        assert fp_input.has_focus
        await type_into(pilot, "DEAD BEEF")
        await pilot.press("enter")
        await settle(pilot)
        assert c.step == FINGERPRINT and c.mismatches == 1  # the step restarts
        assert any("may be forged" in m for m in seen), seen
        assert "may be forged" in text_of(app, "#ceremony-detail")
        assert expected not in screen_text(app) and fp_input.value == ""
        await type_into(pilot, expected.lower().replace(" ", ""))
        await pilot.press("enter")
        await settle(pilot)
        assert c.step == REGISTER and expected in screen_text(app)  # shown after the match


@sync
async def test_a_handover_without_the_ceremony_says_so_with_its_new_wallet(world: World) -> None:
    world.submit(world.request(95, handover=True, offer_next=True))
    app, _ = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        detail = text_of(app, "#request-detail")
        assert "HANDOVER" in detail and wallet_fingerprint(world.ms1) in detail
        assert "the ceremony was not run here" in detail
        assert world.ms1.address(__import__("bftanchor.network", fromlist=["network"])
                                 .network(world.deployment.chain)) in detail
        assert "check on the device" in detail.lower()
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        body = str(app.screen.body)
        assert wallet_fingerprint(world.ms1) in body and "device" in body
        await pilot.press("n")


@sync
async def test_a_fee_far_above_the_recent_median_is_called_out(world: World) -> None:
    # The recent checkpoints paid 0.4 sat/vB (as the journal recorded them)...
    for rnd in (1, 2, 3):
        world.appliance.journal.log("signed", {"fee_rate": 0.4}, f"{rnd:064x}", 0, rnd)
    world.submit(world.request(5, fee=600))  # ...this one 2.4 sat/vB: six times the median
    app, _ = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        detail = text_of(app, "#request-detail")
        assert "6.0x the recent median of 0.4 sat/vB: far above it" in detail


@sync
async def test_policy_refusals_are_listed_once_however_often_the_node_retries(
    world: World,
) -> None:
    for _ in range(3):
        world.submit(world.request(6, fee=300_000))
    app, _ = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        refused = text_of(app, "#refused")
        assert refused.count("e0 r6") == 1 and "x3" in refused and "exceeds" in refused


@sync
async def test_a_control_socket_of_another_appliance_is_refused(
    world: World, tmp_path: Path
) -> None:
    sock = tmp_path / "control.sock"
    server = world.service.serve_control(sock)
    try:
        wrong = RemoteBackend(sock, world.deployment, world.hwi, "v3")
        with pytest.raises(BackendError, match="not the one the config names: validator_id"):
            wrong.check_identity()
        world.submit(world.request(5))
        app, seen = console(wrong)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.data.pending == [] and world.service.queue.pending()
            assert any("not the one the config names" in m for m in seen), seen
            await pilot.press("a")
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmDialog)  # nothing to approve
        right = RemoteBackend(sock, world.deployment, world.hwi, "v0")
        right.check_identity()
    finally:
        server.shutdown()
        server.server_close()


@sync
async def test_indicators_go_unknown_with_last_seen_when_the_appliance_stops(
    world: World, tmp_path: Path
) -> None:
    sock = tmp_path / "control.sock"
    # Started against a socket nobody serves: nothing claims a queue or a mode.
    app, _ = console(RemoteBackend(sock, world.deployment, world.hwi, "v0"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        bar = text_of(app, "#status-bar")
        assert "down" in bar and "never seen" in bar and "unknown" in bar
        assert "not answering" in text_of(app, "#request-detail")
        assert "No request is waiting" not in text_of(app, "#request-detail")
    server = world.service.serve_control(sock)
    world.submit(world.request(5))
    app, _ = console(RemoteBackend(sock, world.deployment, world.hwi, "v0"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert len(app.data.pending) == 1 and "MANUAL" in text_of(app, "#status-bar")
        server.shutdown()
        server.server_close()  # `appliance serve` exited
        await app.refresh_data()
        await pilot.pause()
        bar = text_of(app, "#status-bar")
        assert "down (last seen" in bar and "link ? unknown" in bar and "MANUAL" not in bar
        assert app.data.pending == [] and "not answering" in text_of(app, "#request-detail")


@sync
async def test_help_lists_every_key_and_q_asks_when_requests_wait(world: World) -> None:
    world.submit(world.request(5))
    app, _ = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        help_text = text_of(app, "#help-text")
        for key in ("1 f1", "ctrl+r", "?", "q", "a ", "r ", "m ", "/", "k ", "g ", "i ", "x "):
            assert f"  {key}" in help_text, key
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog) and "waiting" in str(app.screen.body)
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running
    world.service.queue.refuse(world.service.queue.pending()[0].id)
    app, _ = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running  # nothing waiting: no question


@sync
async def test_decisions_are_written_to_the_consoles_log(world: World, caplog) -> None:
    world.submit(world.request(5))
    world.submit(world.request(5, fee=700))
    app, _ = console(world.backend)
    with caplog.at_level(logging.INFO, logger="bft_anchor.tui"):
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await confirm(pilot, "a")
            await until(pilot, lambda: len(app.data.pending) == 1)
            await pilot.press("r")
            await pilot.pause()
            await type_into(pilot, "wrong fee")
            await pilot.press("enter")
            await settle(pilot)
    logged = caplog.text
    assert "operator approved request" in logged and "signed" in logged
    assert "operator refused request" in logged and "wrong fee" in logged


@sync
async def test_device_lists_registered_wallets_by_epoch_with_their_fingerprint(
    world: World,
) -> None:
    world.hwi.register(world.ms0)
    app, _ = console(world.backend)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await app.refresh_device()
        await settle(pilot)
        table = app.screen.query_one("#registered", DataTable)
        row = [str(c) for c in table.get_row_at(0)]
        assert row[0] == "epoch 0" and row[1] == wallet_fingerprint(world.ms0)
