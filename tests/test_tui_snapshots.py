"""Snapshots (SVG) of the console's main screens, compared with the committed ones.

Everything on screen is fixed: the BFT chain's seed, the device's mnemonic, the coin,
the journal's and the queue's clock (frozen_journal_time) and the console's own clock.
The emulator's TCP port is the one thing that varies, so the device screen is given a
fixed path. Update after a deliberate change with `pytest --snapshot-update` and look at
the SVGs before committing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_tui_app import type_into
from test_tui_world import T0, World, frozen_journal_time  # noqa: F401  (a fixture)
from textual.pilot import Pilot

from tui.app import OperatorConsole
from tui.backend import DeviceView

SIZE = (132, 44)
NOW = T0 + 754  # 12m34s after everything the journal holds


@pytest.fixture
def world(tmp_path: Path, frozen_journal_time: float):  # noqa: F811
    w = World(tmp_path)
    real = w.backend.device

    def fixed_path(*args: Any) -> DeviceView:
        view = real(*args)
        view.path = "tcp:127.0.0.1:30121" if view.path else None
        return view

    w.backend.device = fixed_path  # type: ignore[method-assign]
    yield w
    w.close()


def console(world: World) -> OperatorConsole:
    return OperatorConsole(world.backend, clock=lambda: NOW, poll=0, device_poll=0)


async def settle(pilot: Pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_requests_screen(world: World, snap_compare: Any) -> None:
    world.submit(world.request(5))
    world.submit(world.request(95, handover=True, offer_next=True))
    assert snap_compare(console(world), press=["down"], terminal_size=SIZE)


def test_history_screen(world: World, snap_compare: Any) -> None:
    world.submit(world.request(5))
    world.submit(world.request(7))
    first, second = world.service.queue.pending()
    world.service.queue.approve(first.id)
    world.submit(world.request(6, fee=300_000))  # over the limit: refused by the policy
    world.service.queue.refuse(second.id, "testing")
    world.service.queue.set_mode("auto")
    assert snap_compare(console(world), press=["2", "down", "down"], terminal_size=SIZE)


def test_device_screen(world: World, snap_compare: Any) -> None:
    world.hwi.register(world.ms0)
    assert snap_compare(console(world), press=["3"], terminal_size=SIZE)


def test_epochs_screen_mid_ceremony(
    world: World, snap_compare: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = world.write_record()
    monkeypatch.chdir(record.parent)  # a fixed relative path (typed, so on screen)

    async def to_step_c(pilot: Pilot) -> None:
        await pilot.press("4")
        await pilot.press("k")
        await settle(pilot)
        await type_into(pilot, record.name)
        await pilot.press("enter")
        await settle(pilot)
        pilot.app.clear_notifications()  # toasts expire on a clock: not in a snapshot

    assert snap_compare(console(world), run_before=to_step_c, terminal_size=SIZE)


def test_requests_at_80x24(world: World, snap_compare: Any) -> None:
    """The smallest terminal the console supports: nothing essential cut, footer intact."""
    world.submit(world.request(5))
    world.submit(world.request(6, fee=300_000))  # refused by the policy: listed once
    world.submit(world.request(6, fee=300_000))
    assert snap_compare(console(world), terminal_size=(80, 24))


def test_help_screen_at_80x24(world: World, snap_compare: Any) -> None:
    assert snap_compare(console(world), press=["question_mark"], terminal_size=(80, 24))
