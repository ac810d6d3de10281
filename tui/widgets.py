"""Widgets every screen shares: the status bar and the confirmation dialog."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

if TYPE_CHECKING:
    from tui.backend import DeviceView, StatusView


def short(h: str | None, n: int = 12) -> str:
    if not h:
        return "-"
    return h if len(h) <= n else h[:n] + "…"


def age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def dot(ok: bool | None) -> tuple[str, str]:
    if ok is None:
        return "○", "dim"
    return ("●", "green") if ok else ("●", "bold red")


def status_text(
    status: StatusView | None, device: DeviceView | None, now: float, error: str | None = None
) -> Text:
    """One line: link, device, journal head, expected coin, last signature, mode."""
    t = Text()
    if status is None:
        t.append("appliance ", style="bold")
        t.append("unreachable" if error else "loading…", style="bold red" if error else "dim")
        return t
    sym, style = dot(status.link)
    t.append("link ")
    t.append(sym, style=style)
    if status.link is None:
        t.append(" off", style="dim")
    else:
        t.append(" connected" if status.link else " down", style=style)
    t.append(" │ device ")
    dev_ok = device.connected if device is not None else None
    sym, style = dot(dev_ok)
    t.append(sym, style=style)
    if device is None:
        t.append(" checking…", style="dim")
    elif device.connected:
        t.append(f" {device.fingerprint}", style=style)
    else:
        t.append(" disconnected", style=style)
    head = status.journal_head or {}
    t.append(" │ journal ")
    if head.get("txid"):
        t.append(
            f"#{head.get('seq')} e{head.get('epoch')}/r{head.get('round')} "
            f"{short(head.get('txid'), 8)}"
        )
    else:
        t.append("empty", style="dim")
    t.append(" │ coin ")
    coins = status.expected_coins
    if coins:
        # The newest: the coin the last signed checkpoint creates (a replacement could
        # still spend its parent, counted as "+1").
        newest = [c for c in coins if str(c.get("outpoint", "")).startswith(f"{head.get('txid')}:")]
        c = newest[0] if newest else coins[0]
        txid, _, vout = str(c.get("outpoint")).partition(":")
        t.append(f"{txid[:8]}…:{vout} {int(c.get('value', 0)):,} e{c.get('epoch')}")
        if len(coins) > 1:
            t.append(f" +{len(coins) - 1}", style="dim")
    t.append(" │ last sig ")
    if status.last_signature is None:
        t.append("never", style="dim")
    else:
        t.append(f"{age(now - status.last_signature)} ago")
    t.append(" │ ")
    t.append(f"{status.mode.upper()}", style="bold yellow" if status.mode == "auto" else "bold")
    if status.pending:
        t.append(f" │ {status.pending} pending", style="bold magenta")
    if error:
        t.append(f"  ! {error}", style="bold red")
    return t


class StatusBar(Static):
    """The appliance at a glance, at the bottom of every screen."""

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        background: $panel;
        color: $text;
        padding: 0 1;
    }
    """


class ConfirmDialog(ModalScreen[bool]):
    """Yes or no, for every action that signs, refuses, or changes what will be signed."""

    DEFAULT_CSS = """
    ConfirmDialog {
        align: center middle;
    }
    ConfirmDialog > Vertical {
        width: 80;
        height: auto;
        max-height: 90%;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    ConfirmDialog #confirm-title {
        text-style: bold;
        margin-bottom: 1;
    }
    ConfirmDialog Horizontal {
        height: auto;
        align: center middle;
        margin-top: 1;
    }
    ConfirmDialog Button {
        margin: 0 2;
    }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, body: str | Text) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, id="confirm-title")
            yield Static(self.body, id="confirm-body")
            with Horizontal():
                yield Button("Yes (y)", variant="warning", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
