"""Widgets every screen shares: the status bar and the confirmation dialog."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

if TYPE_CHECKING:
    from tui.backend import DeviceView, StatusView


_T = TypeVar("_T")


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


def seen(ts: float | None, now: float) -> str:
    """When something was last seen, for an indicator that is down or unknown."""
    if ts is None:
        return "never seen"
    return f"last seen {time.strftime('%H:%M:%S', time.gmtime(ts))}Z, {age(now - ts)} ago"


def status_text(
    status: StatusView | None, device: DeviceView | None, now: float, error: str | None = None,
    *, last_seen: float | None = None, link_seen: float | None = None,
    device_seen: float | None = None,
) -> Text:
    """One line: appliance, link, device, journal head, expected coin, last signature, mode.

    Nothing is shown as up on stale information: when the appliance does not answer, the
    link and the mode it reported are "unknown", with when they were last seen.
    """
    t = Text()
    if status is None or error:
        t.append("appliance ", style="bold")
        if error:
            t.append("● down", style="bold red")
            t.append(f" ({seen(last_seen, now)})", style="red")
            t.append(" │ link ")
            t.append("? unknown", style="dim")
            t.append(" │ mode ? │ requests unknown", style="dim")
        else:
            t.append("loading…", style="dim")
        return t
    sym, style = dot(status.link)
    t.append("link ")
    t.append(sym, style=style)
    if status.link is None:
        t.append(" off", style="dim")
    elif status.link:
        t.append(" connected", style=style)
    else:
        t.append(f" down ({seen(link_seen, now)})", style=style)
    t.append(" │ device ")
    dev_ok = device.connected if device is not None else None
    sym, style = dot(dev_ok)
    t.append(sym, style=style)
    if device is None:
        t.append(" checking…", style="dim")
    elif device.connected:
        t.append(f" {device.fingerprint}", style=style)
    else:
        t.append(f" disconnected ({seen(device_seen, now)})", style=style)
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
    return t


class StatusBar(Static):
    """The appliance at a glance, at the bottom of every screen."""

    DEFAULT_CSS = """
    StatusBar {
        height: auto;
        max-height: 3;
        background: $panel;
        color: $text;
        padding: 0 1;
    }
    """


class _Dialog(ModalScreen[_T]):
    """A modal with a title and a body above its controls; `kind` names their ids
    (#<kind>-title, #<kind>-body) for the subclass's CSS."""

    kind = ""

    def __init__(self, title: str, body: str | Text) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, id=f"{self.kind}-title")
            yield Static(self.body, id=f"{self.kind}-body")
            yield from self.controls()

    def controls(self) -> ComposeResult:
        raise NotImplementedError


class ConfirmDialog(_Dialog[bool]):
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
    kind = "confirm"

    def controls(self) -> ComposeResult:
        with Horizontal():
            yield Button("Yes (y)", variant="warning", id="yes")
            yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class ReasonDialog(_Dialog[str | None]):
    """Refuse with a reason: the operator types why (optional); enter refuses, escape
    cancels. Dismisses with the reason ("" when none) or None when cancelled."""

    DEFAULT_CSS = """
    ReasonDialog {
        align: center middle;
    }
    ReasonDialog > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        border: thick $error;
        background: $surface;
        padding: 0 1;
    }
    ReasonDialog #reason-title {
        text-style: bold;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    kind = "reason"

    def controls(self) -> ComposeResult:
        from textual.widgets import Input

        yield Input(placeholder="reason (optional), journaled; enter refuses, escape "
                    "cancels", id="reason")

    def on_input_submitted(self, event: Any) -> None:
        self.dismiss(str(event.value).strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """`?`: every key of the console and of each screen, with what it does."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > VerticalScroll {
        width: 76;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    """

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        from textual.containers import VerticalScroll

        t = Text()
        t.append("Keys (escape or ? closes)\n", style="bold underline")
        for title, keys in self.sections:
            t.append(f"\n{title}\n", style="bold")
            for key, what in keys:
                t.append(f"  {key:<12}", style="bold cyan")
                t.append(f"{what}\n")
        with VerticalScroll():
            yield Static(t, id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
