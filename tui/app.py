"""The operator's console: one Textual app over one appliance backend.

The app owns the data, a reactive attribute refreshed by polling workers (the blocking
calls run in threads, never on the event loop); screens watch it and render. The
operations (approve, refuse, mode, install, register) run as workers that turn every
failure into a notification: an unplugged device, a dropped link or a bad record must
never take the console down. Layout lives in .tcss files beside the app and each screen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive

from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import EpochRecord
from tui.backend import Backend, DeviceView, StatusView
from tui.decode import RequestView, decode_request
from tui.screens.device import DeviceScreen
from tui.screens.epochs import EpochsScreen
from tui.screens.history import HistoryScreen
from tui.screens.requests import RequestsScreen
from tui.widgets import ConfirmDialog

log = logging.getLogger("bft_anchor.tui")
T = TypeVar("T")


@dataclass
class ConsoleData:
    """Everything the screens show, as of the last refresh."""

    status: StatusView | None = None
    pending: list[RequestView] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    records: dict[int, EpochRecord] = field(default_factory=dict)
    device: DeviceView | None = None
    error: str | None = None  # the appliance did not answer the last refresh
    last_seen: float | None = None  # when the appliance last answered
    link_seen: float | None = None  # when the link was last seen connected
    device_seen: float | None = None  # when the device last answered


class OperatorConsole(App[int]):
    """bft-anchor's operator console."""

    TITLE = "bft-anchor operator console"
    MODES = {
        "requests": RequestsScreen,
        "history": HistoryScreen,
        "device": DeviceScreen,
        "epochs": EpochsScreen,
    }
    DEFAULT_MODE = "requests"
    ENABLE_COMMAND_PALETTE = False
    CSS_PATH = "app.tcss"
    # What every screen shows; assigning it (or mutate_reactive) re-renders the watchers.
    data: reactive[ConsoleData] = reactive(ConsoleData, always_update=True, init=False)
    BINDINGS = [
        Binding("1,f1", "switch_mode('requests')", "Requests", key_display="1",
                tooltip="the requests waiting for your decision, each decoded"),
        Binding("2,f2", "switch_mode('history')", "History", key_display="2",
                tooltip="the journal's decisions, newest first"),
        Binding("3,f3", "switch_mode('device')", "Device", key_display="3",
                tooltip="the signing device, what it can sign, the wallets on it"),
        Binding("4,f4", "switch_mode('epochs')", "Epochs", key_display="4",
                tooltip="the current epoch and the next epoch's key ceremony"),
        Binding("ctrl+r", "refresh", "Refresh", show=False,
                tooltip="read the appliance and the device again now"),
        Binding("question_mark", "help", "Help", tooltip="this list of keys"),
        Binding("q", "quit", "Quit", tooltip="leave the console (asks first when requests "
                "are waiting)"),
    ]

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.time,
        poll: float = 1.0,
        device_poll: float = 3.0,
        history_limit: int = 500,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.clock = clock
        self.poll = poll
        self.device_poll = device_poll
        self.history_limit = history_limit
        self.data = ConsoleData()
        self._said: dict[str, str | None] = {}

    # --- life cycle -----------------------------------------------------------------

    async def on_mount(self) -> None:
        await self.refresh_data()
        await self.refresh_device()
        if self.poll > 0:
            self.set_interval(self.poll, self._tick, name="poll")
        if self.device_poll > 0:
            self.set_interval(self.device_poll, self._tick_device, name="device-poll")

    def _busy(self, group: str) -> bool:
        return any(w.group == group and not w.is_finished for w in self.workers)

    def _tick(self) -> None:
        if not self._busy("poll"):  # a slow appliance: skip a tick, never pile up
            self.poll_data()

    def _tick_device(self) -> None:
        if not self._busy("device"):  # HWI may take seconds: never cancel a probe
            self.poll_device()

    @work(group="poll")
    async def poll_data(self) -> None:
        await self.refresh_data()

    @work(group="device")
    async def poll_device(self) -> None:
        await self.refresh_device()

    @work(group="poll")
    async def action_refresh(self) -> None:
        await self.refresh_data()
        await self.refresh_device()

    def _changed(self) -> None:
        """The data was changed in place: tell the watching screens."""
        self.mutate_reactive(OperatorConsole.data)

    def say_once(self, key: str, message: str | None, severity: str = "warning") -> None:
        """Notify when a condition starts or changes, not on every poll."""
        if self._said.get(key) == message:
            return
        self._said[key] = message
        if message:
            self.notify(message, severity=severity, timeout=8)  # type: ignore[arg-type]

    # --- reading --------------------------------------------------------------------

    def _fetch(self) -> ConsoleData:
        b = self.backend
        status = b.status()
        records = b.records()
        pending = [decode_request(p, records, b.chain, b.magic) for p in b.pending()]
        history = b.history(self.history_limit)
        now = self.clock()
        old = self.data
        link_seen = now if status.link else old.link_seen
        return ConsoleData(status, pending, history, records, old.device, None, now, link_seen,
                           old.device_seen)

    async def refresh_data(self) -> None:
        """Reload status, queue, records and history; a failure is shown, not raised."""
        try:
            data = await asyncio.to_thread(self._fetch)
        except Exception as exc:
            msg = f"appliance: {exc}"
            self.data.error = msg
            self.data.pending = []  # stale: nothing can be approved from an old list
            self.say_once("appliance", msg, "error")
            self._changed()
            return
        if self._said.get("appliance"):
            self.say_once("appliance", None)
            self.notify("appliance reachable again")
        old = self.data.status
        new = data.status
        if new is not None:
            if new.link_error:
                self.say_once("link-error", new.link_error, "error")
            elif old is not None and old.link and new.link is False:
                self.notify("the serial link dropped", severity="error", timeout=8)
        data.device = self.data.device
        self.data = data

    async def refresh_device(self) -> None:
        """Read the device through HWI; unplugging it is a notification, never a crash."""
        try:
            records = self.data.records
            epochs = self.capability_epochs()
            view = await asyncio.to_thread(self.backend.device, records, epochs)
        except Exception as exc:
            view = DeviceView(connected=False, kind="?", error=f"{type(exc).__name__}: {exc}")
        was = self.data.device
        if not view.connected:
            self.say_once("device", f"device disconnected: {view.error}", "error")
        else:
            self.data.device_seen = self.clock()
            if was is not None and not was.connected:
                self.say_once("device", None)
                self.notify(f"device {view.fingerprint} connected again")
        self.data.device = view
        self._changed()

    def capability_epochs(self) -> list[int]:
        """The current epoch and the next, which the device must be able to sign."""
        status = self.data.status
        cur = status.current_epoch if status is not None else 0
        return [cur, cur + 1]

    # --- keys -----------------------------------------------------------------------

    def key_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Every key, from the bindings themselves (so the help cannot drift from them)."""

        def keys(bindings: list) -> list[tuple[str, str]]:
            out = []
            for b in bindings:
                b = b if isinstance(b, Binding) else Binding(*b)
                key = b.key.replace("question_mark", "?").replace("slash", "/")
                out.append((key.replace(",", " "), b.tooltip or b.description or b.action))
            return out

        sections = [("Everywhere", keys(self.BINDINGS))]
        for name, screen in self.MODES.items():
            sections.append((f"{name.capitalize()} screen", keys(screen.BINDINGS)))
        sections.append(("Confirmations", [("y / n", "yes / no (escape: no)"),
                                           ("enter", "refuse with the reason typed"),
                                           ("escape", "cancel")]))
        return sections

    def action_help(self) -> None:
        from tui.widgets import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.key_sections()))

    async def action_quit(self) -> None:
        """Quit; when requests are waiting for a decision, ask first."""
        waiting = len(self.data.pending)
        if not waiting:
            self.exit()
            return

        async def leave() -> None:
            self.exit()

        self.confirm(
            "Quit the console?",
            f"{waiting} request(s) are waiting for your decision. "
            + ("The appliance keeps them (it runs on its own); "
               if self.backend.kind == "attached" else
               "The appliance runs in this console: quitting stops it and they are lost; ")
            + "the node will ask again.",
            leave,
        )

    # --- acting ---------------------------------------------------------------------

    async def call(self, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Run a blocking backend call in a thread; on failure notify and return None."""
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            log.warning("%s failed: %s", what, exc)
            self.notify(f"{what} failed: {exc}", severity="error", timeout=10)
            return None

    def confirm(self, title: str, body: Any, then: Callable[[], Any]) -> None:
        """Ask first; `then` (a coroutine function) runs as a worker on yes."""

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(then(), group="op")

        self.push_screen(ConfirmDialog(title, body), answered)

    async def approve(self, rid: str) -> dict[str, Any] | None:
        # A device that is gone would make the queue drop the request as refused.
        fp = await self.call("the device check before signing", self.backend.probe_device)
        if fp is None:
            await self.refresh_device()
            return None
        outcome = await self.call(f"approving {rid}", self.backend.approve, rid)
        if outcome is not None:
            log.warning("operator approved request %s: %s", rid,
                        "signed" if outcome.get("signed") else
                        "not signed: " + "; ".join(outcome.get("reasons") or []))
            if outcome.get("signed"):
                txid = (outcome.get("summary") or {}).get("txid", "")
                self.notify(f"signed {txid}", title="approved", timeout=8)
                await self.refresh_device()  # signing registers the wallet on the device
            else:
                reasons = "; ".join(outcome.get("reasons") or ["refused"])
                self.notify(f"not signed: {reasons}", severity="error", timeout=12)
        await self.refresh_data()
        return outcome

    async def refuse(self, rid: str, reason: str | None = None) -> None:
        done = await self.call(f"refusing {rid}", self._refuse, rid, reason)
        if done:
            log.warning("operator refused request %s%s", rid,
                        f": {reason}" if reason else " (no reason given)")
            self.notify(f"refused {rid}; the refusal is in the journal", title="refused")
        await self.refresh_data()

    def _refuse(self, rid: str, reason: str | None = None) -> bool:
        self.backend.refuse(rid, reason or None)
        return True

    async def set_mode(self, mode: str) -> None:
        done = await self.call(f"switching to {mode}", self._set_mode, mode)
        if done:
            self.notify(f"approval mode is now {mode} (journaled)", title="mode")
        await self.refresh_data()

    def _set_mode(self, mode: str) -> bool:
        self.backend.set_mode(mode)
        return True

    async def register(self, multisig: EpochMultisig) -> tuple[bool, str | None]:
        try:
            address = await asyncio.to_thread(self.backend.register, multisig)
        except Exception as exc:
            self.notify(f"registration failed: {exc}", severity="error", timeout=12)
            return False, None
        await self.refresh_device()
        return True, address

    async def install_record(self, record: EpochRecord) -> bool:
        problems = await self.call("installing the record", self.backend.install_record,
                                   record.to_json())
        if problems is None:
            return False
        if problems:
            self.notify("record refused: " + "; ".join(problems), severity="error", timeout=12)
            return False
        await self.refresh_data()
        return True

    async def on_unmount(self) -> None:
        self.workers.cancel_all()
