"""What every screen of the console has: a header, the status bar and the key footer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from tui.widgets import StatusBar, status_text

log = logging.getLogger("bft_anchor.tui")

if TYPE_CHECKING:
    from tui.app import ConsoleData, OperatorConsole


class ConsoleScreen(Screen[None]):
    """A screen that renders the app's data whenever it changes."""

    NAME = "?"

    def compose_body(self) -> ComposeResult:
        yield from ()

    def compose(self) -> ComposeResult:
        yield Header(icon="⚓")
        yield from self.compose_body()
        yield StatusBar(id="status-bar")
        yield Footer(compact=True)

    @property
    def console(self) -> OperatorConsole:
        return cast("OperatorConsole", self.app)

    _ready = False

    def on_mount(self) -> None:
        b = self.console.backend
        self.sub_title = f"{self.NAME} · {b.validator_id} · {b.chain} · {b.kind}"
        self._ready = True  # is_mounted turns true only after the mount handlers
        # Textual's reactivity: render now and whenever the app's data changes.
        self.watch(self.console, "data", self._on_data, init=True)

    def on_unmount(self) -> None:
        self._ready = False

    def _on_data(self, data: ConsoleData) -> None:
        try:
            self.show_data(data)
        except Exception:  # a rendering bug must not stop the console
            log.exception("rendering %s failed", self.NAME)

    def show_data(self, data: ConsoleData) -> None:
        if not self._ready:
            return
        self.update_if_changed(
            self.query_one(StatusBar),
            status_text(data.status, data.device, self.console.clock(), data.error,
                        last_seen=data.last_seen, link_seen=data.link_seen,
                        device_seen=data.device_seen),
        )
        self.render_data(data)

    @staticmethod
    def update_if_changed(widget: Static, content: Text | str) -> None:
        """Polling re-renders every second; unchanged content is not redrawn."""
        if widget.content != content:
            widget.update(content)

    def render_data(self, data: ConsoleData) -> None:
        pass
