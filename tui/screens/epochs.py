"""Epochs: the current epoch's record and multisig, and the next epoch's key ceremony.

The ceremony is a guided flow that cannot be done out of order (see ceremony.py): the
key is shown, the record is loaded and its certificate verified by the current quorum,
the wallet fingerprint is confirmed against a value obtained out of band, the multisig is
registered on the device, and only then is the appliance armed for the handover.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Static

from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import EpochRecord
from bftanchor.network import network
from tui.ceremony import ARM, FINGERPRINT, KEY, RECORD, REGISTER, STEPS, Ceremony, CeremonyError
from tui.decode import wallet_fingerprint
from tui.screens.base import ConsoleScreen
from tui.widgets import short

if TYPE_CHECKING:
    from tui.app import ConsoleData


def record_text(
    record: EpochRecord, chain: str, mine: str | None, title: str, full_keys: bool = False,
    descriptor: bool = True, fingerprint: bool = True,
) -> Text:
    """An epoch's multisig: address, fingerprint, descriptor and each validator's key."""
    ms = EpochMultisig(record)
    t = Text()
    t.append(f"{title}", style="bold")
    t.append(
        f"   rounds {record.start_round}..{record.end_round}   "
        f"{record.threshold} of {record.n}\n"
    )
    t.append("address     ", style="bold")
    t.append(f"{ms.address(network(chain))}\n", style="cyan")
    t.append("fingerprint ", style="bold")
    if fingerprint:
        t.append(f"{wallet_fingerprint(ms)}", style="bold cyan")
        t.append("  (first 8 hex of SHA256 of the descriptor)\n", style="dim")
    else:
        t.append("hidden until you type the one received out of band\n", style="dim")
    if descriptor:
        t.append("descriptor  ", style="bold")
        t.append(f"{ms.descriptor()}\n", style="dim")
    t.append("validators\n", style="bold")
    for v in record.validators:
        t.append(f"  {v.id:<4} ")
        if full_keys:
            t.append(f"bft {short(v.bft_pubkey.hex(), 16)}", style="dim")
        else:
            origin, _, xpub = v.pow_key.partition("]")
            t.append(f"{origin}]{xpub[:8]}…{xpub[-4:]}")
        if mine is not None and v.fingerprint.hex() == mine:
            t.append("  ← this appliance", style="bold green")
        t.append("\n")
        if full_keys:
            t.append(f"       {v.pow_key}\n", style="cyan")
    return t


class EpochsScreen(ConsoleScreen):
    """The current epoch, and the key rotation ceremony for the next."""

    NAME = "epochs"
    CSS_PATH = "epochs.tcss"

    BINDINGS = [
        Binding("k", "show_key", "(a) Key",
                tooltip="(a) read this appliance's key for the next epoch from the device"),
        Binding("g", "register", "(d) Register",
                tooltip="(d) register the next epoch's multisig on the device"),
        Binding("i", "arm", "(e) Arm",
                tooltip="(e) install the next epoch's record in the appliance"),
        Binding("x", "restart", "Restart",
                tooltip="restart the ceremony from step (a)"),
        Binding("escape", "unfocus", "Leave input", show=False,
                tooltip="leave the text field"),
    ]

    ceremony: Ceremony | None = None
    _bindings_step = -1

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="body"):
            with VerticalScroll(id="epoch-pane"):
                yield Static(id="epoch-current")
            with VerticalScroll(id="ceremony-pane"):
                yield Static(id="ceremony")
                yield Static(id="ceremony-hint")
                yield Input(placeholder="(b) path of the next epoch's record (JSON)",
                            id="record-path")
                yield Input(placeholder="(c) the wallet fingerprint given to you out of band",
                            id="fingerprint-input")
                yield Static(id="ceremony-detail")

    def action_unfocus(self) -> None:
        self.set_focus(None)

    # --- rendering ------------------------------------------------------------------

    def render_data(self, data: ConsoleData) -> None:
        chain = self.console.backend.chain
        status = data.status
        current = self.query_one("#epoch-current", Static)
        if status is None or status.current_epoch not in data.records:
            self.update_if_changed(current, Text("Reading the appliance's epochs…", style="dim"))
            return
        e = status.current_epoch
        record = data.records[e]
        t = record_text(record, chain, status.fingerprint, f"Epoch {e} (current)")
        nxt = data.records.get(e + 1)
        t.append("\nheld epochs ", style="bold")
        t.append(", ".join(str(x) for x in sorted(data.records)))
        if nxt is not None:
            t.append(f"\nepoch {e + 1} is held: a handover to its multisig is allowed\n",
                     style="green")
        else:
            t.append(f"\nepoch {e + 1} is not held yet: run the ceremony\n", style="yellow")
        self.update_if_changed(current, t)
        c = self.ceremony
        stale = c is not None and (c.done or c.step == KEY) and c.current != record
        if c is None or stale:
            self.ceremony = Ceremony(record)
        self.render_ceremony()

    def render_ceremony(self) -> None:
        c = self.ceremony
        if c is None:
            return
        status = self.console.data.status
        t = Text()
        t.append(f"Key rotation ceremony for epoch {c.next_epoch}\n", style="bold underline")
        for i, (letter, title) in enumerate(STEPS):
            if i < c.step:
                t.append(f"  ✓ ({letter}) {title}\n", style="green")
            elif i == c.step:
                t.append(f"  ▶ ({letter}) {title}\n", style="bold yellow")
            else:
                t.append(f"  · ({letter}) {title}\n", style="dim")
        if c.done:
            t.append(f"\nDone: the appliance holds epoch {c.next_epoch}'s record and the device "
                     "has its multisig; the handover can be signed.\n", style="bold green")
        self.update_if_changed(self.query_one("#ceremony", Static), t)
        hint = {
            KEY: "press k to read this appliance's key from the device",
            RECORD: "type the path of the certified record and press enter",
            FINGERPRINT: "type the wallet fingerprint you were given out of band (8 hex "
            "digits) and press enter: the console compares it with the record's",
            REGISTER: "press g to register the multisig on the device",
            ARM: "press i to arm the appliance for the handover",
        }.get(c.step)
        self.update_if_changed(
            self.query_one("#ceremony-hint", Static),
            Text(f"\nnext: {hint}", style="bold yellow") if hint else Text(""),
        )

        d = Text()
        if c.my_key:
            d.append("\n(a) this appliance's key for epoch ", style="bold")
            d.append(f"{c.next_epoch}: hand it to the BFT chain for the record\n", style="bold")
            d.append(f"    {c.my_key}\n", style="cyan")
        if c.record is not None:
            d.append(f"\n(b) record for epoch {c.next_epoch} ", style="bold")
            d.append(f"certified by {', '.join(c.certifiers)} "
                     f"({len(c.certifiers)} of epoch {c.current.epoch}'s {c.current.n}, "
                     f"quorum {c.current.threshold})\n", style="green")
            fp = status.fingerprint if status else None
            # The fingerprint (and the descriptor it hashes) stays hidden until the operator
            # has typed the value received out of band and it matched.
            d.append_text(record_text(c.record, self.console.backend.chain, fp,
                                      f"epoch {c.next_epoch}", full_keys=True, descriptor=False,
                                      fingerprint=c.step > FINGERPRINT))
            if c.mismatches and c.step == FINGERPRINT:
                d.append(f"\n    ! {c.mismatches} fingerprint(s) typed did not match: the "
                         "record may be forged\n", style="bold red")
            if not c.holds_key:
                d.append("    ! this appliance's key is not in the record: it will not sign "
                         f"in epoch {c.next_epoch}\n", style="bold red")
        if c.step > FINGERPRINT:
            d.append(f"\n(c) fingerprint {c.fingerprint} confirmed\n", style="green")
        if c.step > REGISTER:
            shown = c.address or "(no registration needed)"
            d.append(f"(d) registered; the device showed {shown}\n", style="green")
        if c.done:
            d.append("(e) armed\n", style="green")
        self.update_if_changed(self.query_one("#ceremony-detail", Static), d)

        path_in = self.query_one("#record-path", Input)
        fp_in = self.query_one("#fingerprint-input", Input)
        path_in.set_class(c.step != RECORD, "-hidden")
        fp_in.set_class(c.step != FINGERPRINT, "-hidden")
        if c.step != self._bindings_step:
            self._bindings_step = c.step
            self.refresh_bindings()
            if c.step not in (RECORD, FINGERPRINT):
                # A step with no input to type into: show the steps from the top (what is
                # checked, what comes next), not where the last input left the pane.
                self.query_one("#ceremony-pane", VerticalScroll).scroll_home(animate=False)

    # --- the steps ------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        step = {"show_key": KEY, "register": REGISTER, "arm": ARM}.get(action)
        if step is None:
            return True
        c = self.ceremony
        return True if c is not None and c.check(step) is None else None

    def _refuse_step(self, step: int) -> bool:
        c = self.ceremony
        why = "the epochs are not read yet" if c is None else c.check(step)
        if why:
            self.notify(why, severity="warning")
            return True
        return False

    def action_show_key(self) -> None:
        if self._refuse_step(KEY):
            return
        self.run_worker(self._show_key(), group="op")

    def _take_step(self, step: Callable[..., object], *args: Any) -> bool:
        """Take a ceremony step; a refusal is shown, and False returned."""
        try:
            step(*args)
        except CeremonyError as exc:
            self.notify(str(exc), severity="error")
            return False
        return True

    async def _show_key(self) -> None:
        c = self.ceremony
        assert c is not None
        key = await self.console.call("reading the key", self.console.backend.pow_key,
                                      c.next_epoch)
        if key is None:
            return
        if not self._take_step(c.show_key, key):
            return
        self.render_ceremony()
        self.query_one("#record-path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        c = self.ceremony
        if c is None:
            return
        try:
            if event.input.id == "record-path":
                record = c.load_record(event.value)
                self.notify(
                    f"epoch {record.epoch}'s record is certified by "
                    f"{', '.join(c.certifiers)}",
                    title="record verified",
                )
                self.render_ceremony()
                self.query_one("#fingerprint-input", Input).focus()
            elif event.input.id == "fingerprint-input":
                typed, event.input.value = event.value, ""
                try:
                    c.confirm_fingerprint(typed)
                except CeremonyError:
                    self.render_ceremony()  # the warning stays on screen, the step restarts
                    raise
                self.notify(f"fingerprint {c.fingerprint} confirmed", title="fingerprint")
                event.input.value = ""
                self.set_focus(None)
                self.render_ceremony()
        except CeremonyError as exc:
            self.notify(str(exc), severity="error", timeout=12)
        except Exception as exc:  # whatever a file holds, the console stays up
            self.notify(f"{type(exc).__name__}: {exc}", severity="error", timeout=12)

    def action_register(self) -> None:
        if self._refuse_step(REGISTER):
            return
        c = self.ceremony
        assert c is not None and c.multisig is not None
        if not c.holds_key:
            body = (f"The device holds no key of epoch {c.next_epoch}: there is nothing to "
                    "register. Mark the step done?")
        else:
            rec = c.multisig.record
            address = c.multisig.address(network(self.console.backend.chain))
            body = (f"Register epoch {c.next_epoch}'s {rec.threshold}-of-{rec.n} multisig "
                    f"(fingerprint {c.fingerprint}) on the device?\n"
                    f"Check that the device shows {address} and confirm it there.")
        self.console.confirm(f"Register epoch {c.next_epoch}'s wallet?", body, self._register)

    async def _register(self) -> None:
        c = self.ceremony
        assert c is not None and c.multisig is not None
        address: str | None = None
        if c.holds_key:
            ok, address = await self.console.register(c.multisig)
            if not ok:
                return
        if not self._take_step(c.registered, address):
            return
        self.notify(f"epoch {c.next_epoch}'s multisig is registered on the device",
                    title="registered")
        self.render_ceremony()

    def action_arm(self) -> None:
        if self._refuse_step(ARM):
            return
        c = self.ceremony
        assert c is not None
        self.console.confirm(
            f"Arm the appliance for the handover to epoch {c.next_epoch}?",
            f"The appliance will hold epoch {c.next_epoch}'s record, so it will sign a "
            f"checkpoint that moves the coin to its multisig ({c.fingerprint}).",
            self._arm,
        )

    async def _arm(self) -> None:
        c = self.ceremony
        assert c is not None and c.record is not None
        if not await self.console.install_record(c.record):
            return
        if not self._take_step(c.armed):
            return
        self.notify(f"armed: the handover to epoch {c.next_epoch} can be signed", title="armed")
        self.render_ceremony()

    def action_restart(self) -> None:
        c = self.ceremony
        if c is None:
            return

        async def restart() -> None:
            self.ceremony = Ceremony(c.current)
            self.render_ceremony()

        self.console.confirm("Restart the ceremony?", "Every step will have to be done again.",
                             restart)
