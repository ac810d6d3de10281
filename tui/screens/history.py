"""History: every decision in the journal, newest first, searchable by epoch, round or txid.

An operator (or an auditor at their shoulder) sees for each entry what was signed or
refused and why, straight from the journal that forbids equivocation.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Input, Static

from tui.decode import fmt_amount
from tui.screens.base import ConsoleScreen
from tui.widgets import short, utc

if TYPE_CHECKING:
    from tui.app import ConsoleData

STYLES = {"signed": "green", "refused": "red", "approval-mode": "yellow", "adopted": "cyan"}


def matches(entry: dict[str, Any], query: str) -> bool:
    """Every word must match: `e:N` epoch, `r:N` round, a number either, hex a txid part."""
    for word in query.lower().split():
        epoch, rnd, txid = entry.get("epoch"), entry.get("round"), (entry.get("txid") or "")
        if word.startswith(("e:", "epoch:")):
            ok = str(epoch) == word.split(":", 1)[1]
        elif word.startswith(("r:", "round:")):
            ok = str(rnd) == word.split(":", 1)[1]
        elif word.isdigit():
            ok = word in (str(epoch), str(rnd)) or (len(word) >= 6 and word in txid)
        else:
            ok = word in txid or word == entry.get("decision")
        if not ok:
            return False
    return True


def decision_text(entry: dict[str, Any], chain: str) -> Text:
    """One journal decision: what, when, and every reason."""
    d = dict(entry.get("detail") or {})
    t = Text()
    kind = entry.get("decision", "?")
    t.append(f"{kind.upper()}", style="bold " + STYLES.get(kind, ""))
    t.append(f"   #{entry.get('seq')}  {utc(float(entry.get('ts') or 0))} UTC\n\n")
    if entry.get("epoch") is not None:
        t.append(f"epoch {entry.get('epoch')}  round {entry.get('round')}\n")
    if entry.get("txid"):
        t.append("txid ")
        t.append(f"{entry['txid']}\n", style="cyan")
    reasons = d.pop("reasons", None)
    if reasons:
        t.append("\nwhy\n", style="bold")
        for r in reasons:
            t.append(f"  • {r}\n", style="red")
    if kind == "approval-mode":
        t.append(f"\nmode {d.get('from')} -> {d.get('to')} by {d.get('by')}\n")
        return t
    if "commit_state_id" in d:
        t.append(f"\ncommit_state_id {d.pop('commit_state_id')}\n")
    if "qc_signers" in d:
        t.append(f"QC signers {', '.join(d.pop('qc_signers'))}\n")
    if "input" in d:
        t.append(f"spends {d.pop('input')}\n")
    if "coin_value" in d:
        dest = d.pop("dest_epoch", "?")
        t.append(f"coin {fmt_amount(d.pop('coin_value'), chain)} to epoch {dest}'s multisig\n")
    if "fee" in d:
        t.append(f"fee {fmt_amount(d.pop('fee'), chain)} at {d.pop('fee_rate', '?')} sat/vB\n")
    if d.pop("handover", False):
        t.append("HANDOVER\n", style="bold magenta")
    for key in ("epoch", "round", "txid", "vsize", "new_records"):
        d.pop(key, None)
    if d:
        t.append("\n" + json.dumps(d, indent=1, sort_keys=True) + "\n", style="dim")
    return t


class HistoryScreen(ConsoleScreen):
    """The journal's decisions with a search box."""

    NAME = "history"
    CSS_PATH = "history.tcss"

    BINDINGS = [
        Binding("slash", "search", "Search",
                tooltip="search by epoch (e:3), round (r:41), a number or part of a txid"),
        Binding("escape", "leave_search", "Table", show=False,
                tooltip="leave the search field"),
    ]

    _shown: list[dict[str, Any]] = []
    _key: tuple[Any, ...] = ()

    def compose_body(self) -> ComposeResult:
        yield Input(placeholder="search: epoch, round (e:3 r:41) or txid; enter to go to the list",
                    id="history-search")
        with Horizontal(classes="body"):
            table: DataTable[str] = DataTable(id="history", cursor_type="row")
            columns = (("#", 3), ("UTC", 14), ("decision", 13), ("epoch", 5), ("round", 5),
                       ("txid", 11))
            for label, width in columns:
                table.add_column(label, width=width)
            yield table
            with VerticalScroll(id="history-pane"):
                yield Static(id="history-detail")

    def on_screen_resume(self) -> None:
        self.query_one("#history", DataTable).focus()

    def action_search(self) -> None:
        self.query_one("#history-search", Input).focus()

    def action_leave_search(self) -> None:
        self.query_one("#history", DataTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.render_data(self.console.data)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#history", DataTable).focus()

    def render_data(self, data: ConsoleData) -> None:
        query = self.query_one("#history-search", Input).value
        shown = [e for e in data.history if matches(e, query)]
        key = (query, tuple(e.get("seq") for e in shown))
        if key != self._key:
            self._key = key
            self._shown = shown
            table = self.query_one("#history", DataTable)
            table.clear()
            for e in shown:
                kind = e.get("decision", "?")
                table.add_row(
                    str(e.get("seq")),
                    utc(float(e.get("ts") or 0))[5:],
                    Text(kind, style=STYLES.get(kind, "")),
                    "" if e.get("epoch") is None else str(e.get("epoch")),
                    "" if e.get("round") is None else str(e.get("round")),
                    short(e.get("txid"), 10),
                    key=str(e.get("seq")),
                )
        self._show_selected()

    def _show_selected(self) -> None:
        table = self.query_one("#history", DataTable)
        detail = self.query_one("#history-detail", Static)
        if not self._shown:
            query = self._key[0] if self._key else ""
            text = Text("No decision matches." if query else "The journal is empty.")
            self.update_if_changed(detail, text)
            return
        row = min(max(table.cursor_row, 0), len(self._shown) - 1)
        self.update_if_changed(detail, decision_text(self._shown[row], self.console.backend.chain))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self._shown:
            self._show_selected()
