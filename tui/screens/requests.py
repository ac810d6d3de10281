"""Requests: the queue of sign requests held for the operator, each decoded in full.

The operator approves what the transaction does, not a summary of it: the QC's signers
(each verified), the coin spent, every output with its address or payload, the fee, the
handover, and the policy's verdict as of now. A request the policy now refuses cannot be
approved: the action is disabled and the panel says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from tui.decode import RequestView, fmt_amount
from tui.screens.base import ConsoleScreen
from tui.widgets import ReasonDialog, age, short, utc

if TYPE_CHECKING:
    from tui.app import ConsoleData


FEE_WARN_FACTOR = 3.0  # a fee rate this many times the recent median is called out


def median_fee_rate(history: list[dict]) -> float | None:
    """The median fee rate of the last signed checkpoints (what "normal" has been)."""
    rates = sorted(float(d["detail"]["fee_rate"]) for d in history[:50]
                   if d.get("decision") == "signed" and isinstance(d.get("detail"), dict)
                   and isinstance(d["detail"].get("fee_rate"), int | float))
    if not rates:
        return None
    mid = len(rates) // 2
    return rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2


def policy_refusals(history: list[dict], limit: int = 8) -> list[tuple[dict, int]]:
    """Requests the policy refused, newest first, each once (a node retrying the same
    transaction is counted, not repeated); the operator's own refusals are not here."""
    seen: dict[object, list] = {}
    for d in history:
        if d.get("decision") != "refused":
            continue
        detail = d.get("detail") if isinstance(d.get("detail"), dict) else {}
        reasons = tuple(detail.get("reasons") or ())
        if any(str(r).startswith("refused by the operator") for r in reasons):
            continue
        # A node retrying (the same checkpoint, maybe at another fee level) is one request.
        key = (d.get("epoch"), d.get("round"), reasons)
        if key in seen:
            seen[key][1] += 1
        elif len(seen) < limit:
            seen[key] = [d, 1]
    return [(d, n) for d, n in seen.values()]


def request_text(req: RequestView, chain: str, now: float,
                 median_rate: float | None = None) -> Text:
    """Everything about one request, for a person deciding whether to sign it."""
    t = Text()
    t.append(f"Request {req.id}", style="bold")
    if req.created:
        since = f"   held since {utc(req.created)} UTC ({age(now - req.created)} ago)"
        t.append(since, style="dim")
    t.append("\n\n")
    if req.verdict_ok:
        t.append(" POLICY ALLOWS ", style="bold black on green")
        t.append("  a: sign it on the device · r: refuse it (journaled)\n")
    else:
        t.append(" POLICY REFUSES ", style="bold white on red")
        t.append("  approval is disabled · r: refuse it (journaled)\n")
    for r in req.reasons:
        t.append(f"  • {r}\n", style="red")
    for p in req.problems:
        t.append(f"  ! {p}\n", style="yellow")
    t.append("\nQC        ", style="bold")
    t.append(f"epoch {req.epoch}  round {req.round}\n")
    t.append("  commit    ")
    t.append(f"{req.commit_state_id}\n", style="cyan")
    valid = req.valid_signers
    quorum = f"{valid} valid of {req.n} (needs {req.threshold})" if req.n else f"{valid} valid"
    t.append(f"  signers   {quorum}: ")
    for s in req.signers:
        mark = "✓" if s.member and s.valid else ("✗ not a member" if not s.member else "✗ bad sig")
        t.append(f"{s.id} {mark}  ", style="green" if s.member and s.valid else "bold red")
    t.append("\n\nSpends    ", style="bold")
    for i, (outpoint, value) in enumerate(req.inputs):
        lead = "" if i == 0 else "          "
        role = "the checkpoint coin" if i == 0 else "fee top-up (not signed)"
        t.append(f"{lead}#{i} {outpoint}\n")
        t.append(f"             {fmt_amount(value, chain)}  {role}\n", style="dim")
    t.append("\nOutputs\n", style="bold")
    for o in req.outputs:
        t.append(f"  #{o.index}  {fmt_amount(o.value, chain)}  ")
        t.append(f"{o.role}\n", style="bold magenta" if "HANDOVER" in o.role else "")
        if o.address:
            t.append(f"        {o.address}\n", style="cyan")
        if o.payload:
            t.append(f"        {o.payload}\n", style="cyan")
    t.append("\nFee       ", style="bold")
    rate = f"{req.fee_rate:g} sat/vB" if req.fee_rate is not None else "?"
    t.append(f"{fmt_amount(req.fee, chain)} at {rate} (vsize {req.vsize})\n")
    t.append("          ")
    if median_rate is None:
        t.append("no signed checkpoint yet to compare with\n", style="dim")
    elif req.fee_rate is not None and req.fee_rate > FEE_WARN_FACTOR * median_rate:
        t.append(f"! {req.fee_rate / median_rate:.1f}x the recent median of "
                 f"{median_rate:g} sat/vB: far above it\n", style="bold red")
    else:
        t.append(f"recent median {median_rate:g} sat/vB\n", style="dim")
    t.append("Handover  ", style="bold")
    if req.handover:
        moves = f"YES: the coin moves to epoch {req.dest_epoch}'s multisig\n"
        t.append(moves, style="bold magenta")
        t.append("  new wallet fingerprint ", style="bold")
        t.append(f"{req.dest_fingerprint}\n", style="bold cyan")
        t.append("  new wallet address     ", style="bold")
        t.append(f"{req.dest_address}\n", style="cyan")
        if req.dest_armed:
            t.append("  the ceremony installed this record here\n", style="green")
        else:
            t.append("  the request carries this record (certified by the quorum); the "
                     "ceremony was not run here: no fingerprint confirmed, no wallet "
                     "registered beforehand\n", style="yellow")
    else:
        t.append("no\n")
    t.append("txid      ", style="bold")
    t.append(f"{req.txid}\n")
    t.append("\nOn approval, check on the device that it shows the same outputs and fee, "
             "and confirm there only if they match.\n", style="bold yellow")
    return t


def refusals_text(refusals: list[tuple[dict, int]]) -> Text:
    t = Text()
    if not refusals:
        return t
    t.append("Refused by the policy (each once)\n", style="bold")
    for d, n in refusals:
        detail = d.get("detail") if isinstance(d.get("detail"), dict) else {}
        reasons = "; ".join(str(r) for r in detail.get("reasons") or ["?"])
        t.append(f"e{d.get('epoch')} r{d.get('round')} {short(d.get('txid'), 8)}", style="red")
        if n > 1:
            t.append(f" x{n}", style="dim")
        t.append(f" {reasons}\n", style="dim")
    return t


class RequestsScreen(ConsoleScreen):
    """The pending queue and the selected request in full."""

    NAME = "requests"
    CSS_PATH = "requests.tcss"

    BINDINGS = [
        Binding("a", "approve", "Approve",
                tooltip="sign the selected request on the device (asks first)"),
        Binding("r", "refuse", "Refuse",
                tooltip="refuse the selected request, with a reason (journaled)"),
        Binding("m", "mode", "Mode",
                tooltip="switch approval between manual and auto (asks first, journaled)"),
    ]

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="body"):
            table: DataTable[str] = DataTable(id="requests", cursor_type="row")
            for label, width in (("id", 8), ("ep", 2), ("round", 5), ("fee", 6), ("policy", 7)):
                table.add_column(label, width=width)
            with Vertical(id="queue-pane"):
                yield table
                yield Static(id="refused")
            with VerticalScroll(id="request-pane"):
                yield Static(id="request-detail")

    def on_screen_resume(self) -> None:
        self.query_one("#requests", DataTable).focus()

    _shown: tuple[tuple[str, bool], ...] = ()
    _bindings_for: tuple[str, bool] | None = None

    @property
    def selected(self) -> RequestView | None:
        table = self.query_one("#requests", DataTable)
        pending = self.console.data.pending
        if not pending or table.row_count == 0:
            return None
        row = min(max(table.cursor_row, 0), len(pending) - 1)
        return pending[row]

    def render_data(self, data: ConsoleData) -> None:
        shown = tuple((r.id, r.verdict_ok) for r in data.pending)
        if shown != self._shown:  # rebuild only on change: the cursor stays put
            table = self.query_one("#requests", DataTable)
            old_ids = [i for i, _ in self._shown]
            keep = old_ids[table.cursor_row] if 0 <= table.cursor_row < len(old_ids) else None
            self._shown = shown
            table.clear()
            for req in data.pending:
                table.add_row(
                    short(req.id, 8),
                    str(req.epoch),
                    str(req.round),
                    f"{req.fee:,}" if req.fee is not None else "?",
                    Text("allows", style="green")
                    if req.verdict_ok
                    else Text("REFUSES", style="red"),
                    key=req.id,
                )
            ids = [r.id for r in data.pending]
            if keep in ids:
                table.move_cursor(row=ids.index(keep))
        self.update_if_changed(self.query_one("#refused", Static),
                               refusals_text(policy_refusals(data.history)))
        self._show_selected()

    def _show_selected(self) -> None:
        detail = self.query_one("#request-detail", Static)
        req = self.selected
        data = self.console.data
        mode = data.status.mode if data.status else "?"
        if data.error or data.status is None:
            t = Text("The appliance is not answering: its requests and approval mode are "
                     "unknown.\n\n", style="bold red")
            t.append(data.error or "waiting for the first answer…")
            self.update_if_changed(detail, t)
        elif req is None:
            t = Text("No request is waiting for approval.\n\n", style="bold")
            t.append(f"Approval mode: {mode}. ")
            if mode == "auto":
                t.append("Every request the policy allows is signed at once; press m for manual.")
            else:
                t.append("Requests the policy allows wait here for you; press m for auto.")
            self.update_if_changed(detail, t)
        else:
            text = request_text(req, self.console.backend.chain, self.console.clock(),
                                median_fee_rate(data.history))
            self.update_if_changed(detail, text)
        state = (req.id, req.verdict_ok) if req else None
        if state != self._bindings_for:
            self._bindings_for = state
            self.refresh_bindings()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_selected()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("approve", "refuse"):
            req = self.selected
            if req is None:
                return None
            if action == "approve" and not req.verdict_ok:
                return None  # shown disabled: the policy refuses it
        return True

    def action_approve(self) -> None:
        req = self.selected
        if req is None:
            self.notify("no request selected", severity="warning")
            return
        if not req.verdict_ok:
            self.notify(
                "cannot approve: the policy refuses it: " + "; ".join(req.reasons),
                severity="error",
                timeout=10,
            )
            return
        chain = self.console.backend.chain
        body = Text()
        body.append(f"epoch {req.epoch} round {req.round}, commit {short(req.commit_state_id)}\n")
        coin = next((o for o in req.outputs if o.index == 1), None)
        if coin is not None:
            dest = coin.role.removeprefix("coin -> ")
            body.append(f"coin: {fmt_amount(coin.value, chain)} to {dest}\n")
        body.append(f"fee: {fmt_amount(req.fee, chain)}\n")
        if req.handover:
            body.append(f"HANDOVER to epoch {req.dest_epoch}: wallet {req.dest_fingerprint}\n"
                        f"  {req.dest_address}\n", style="bold magenta")
        body.append("\nThe journal records it before the device signs. Check on the device "
                    "that it shows the same outputs and fee; confirm there only if they match.",
                    style="bold")
        rid = req.id
        self.console.confirm(f"Sign request {rid}?", body, lambda: self.console.approve(rid))

    def action_refuse(self) -> None:
        req = self.selected
        if req is None:
            self.notify("no request selected", severity="warning")
            return
        rid = req.id

        def answered(reason: str | None) -> None:
            if reason is not None:
                self.console.run_worker(self.console.refuse(rid, reason), group="op")

        self.app.push_screen(ReasonDialog(
            f"Refuse request {rid}?",
            f"epoch {req.epoch} round {req.round}: nothing is signed; the refusal and your "
            "reason are journaled."), answered)

    def action_mode(self) -> None:
        status = self.console.data.status
        if status is None:
            self.notify("the appliance's mode is not known yet", severity="warning")
            return
        new = "auto" if status.mode == "manual" else "manual"
        why = (
            "In auto mode every request the policy allows is signed at once, without asking."
            if new == "auto"
            else "In manual mode every request the policy allows waits here for you."
        )
        self.console.confirm(
            f"Switch approval from {status.mode} to {new}?",
            why + "\nThe switch is recorded in the journal.",
            lambda: self.console.set_mode(new),
        )
