"""Device: what HWI sees, what its firmware profile allows, and the wallets registered on it.

An operator learns here, before a handover, that the device cannot sign the next
epoch's script (and why), or that the next multisig is not registered on it yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from bftanchor.descriptor import EpochMultisig
from tui.decode import wallet_fingerprint
from tui.screens.base import ConsoleScreen

if TYPE_CHECKING:
    from tui.app import ConsoleData
    from tui.backend import DeviceView


def device_text(dev: DeviceView | None, current: int) -> Text:
    t = Text()
    if dev is None:
        return Text("Reading the device…", style="dim")
    t.append("Device    ", style="bold")
    if dev.connected:
        t.append("● connected\n", style="green")
    else:
        t.append("● not connected\n", style="bold red")
        t.append(f"          {dev.error}\n", style="red")
    rows = [
        ("model", dev.model),
        ("type", dev.device_type),
        ("path", dev.path),
        ("fingerprint", dev.fingerprint),
        ("firmware", dev.firmware),
        ("profile", f"{dev.profile} ({dev.profile_name})" if dev.profile else None),
    ]
    for label, value in rows:
        if value is None and label in ("type", "path") and dev.kind == "software":
            continue
        t.append(f"{label:<12}", style="bold")
        t.append(f"{value if value is not None else '-'}\n")
    if dev.connected and dev.error:
        t.append(f"            {dev.error}\n", style="yellow")
    t.append("\nCan it sign?\n", style="bold")
    if not dev.capability:
        t.append("  (unknown until the device and the epoch records are read)\n", style="dim")
    for epoch in sorted(dev.capability):
        reasons = dev.capability[epoch]
        which = "current" if epoch == current else "next" if epoch == current + 1 else "held"
        t.append(f"  epoch {epoch} ({which}): ")
        if not reasons:
            t.append("yes, wsh(sortedmulti) of this epoch\n", style="green")
        else:
            t.append("NO\n", style="bold red")
            for r in reasons:
                t.append(f"    • {r}\n", style="red")
    if current + 1 not in dev.capability:
        t.append(f"  epoch {current + 1} (next): no record held yet; see Epochs (4)\n", style="dim")
    t.append("\nRegistered multisig wallets\n", style="bold")
    if dev.registered_note:
        t.append(f"  {dev.registered_note}\n", style="dim")
    elif dev.registered is not None and not dev.registered:
        t.append("  none\n", style="dim")
    return t


class DeviceScreen(ConsoleScreen):
    """The signing device as HWI sees it."""

    NAME = "device"
    CSS_PATH = "device.tcss"

    # ctrl+r refreshes on every screen; here it reads the device again ("r" is Refuse).
    BINDINGS = [Binding("ctrl+r", "reread", "Read device",
                        tooltip="read the device again now")]
    _regs: list[dict] = []

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="device-pane", classes="body"):
            yield Static(id="device-info")
            table: DataTable[str] = DataTable(id="registered", cursor_type="row")
            table.add_columns("epoch", "wallet fingerprint", "name on the device", "k of n",
                              "sorted")
            yield table

    def on_screen_resume(self) -> None:
        self.run_worker(self.console.refresh_device(), group="device")

    def action_reread(self) -> None:
        self.notify("reading the device…", timeout=2)
        self.run_worker(self.console.refresh_device(), group="device")

    def render_data(self, data: ConsoleData) -> None:
        current = data.status.current_epoch if data.status else 0
        self.update_if_changed(self.query_one("#device-info", Static),
                               device_text(data.device, current))
        table = self.query_one("#registered", DataTable)
        regs = (data.device.registered if data.device else None) or []
        table.display = bool(regs)
        if regs == self._regs:
            return
        self._regs = list(regs)
        table.clear()
        # By epoch (wallets of no epoch this appliance holds last), each with the wallet
        # fingerprint the ceremony confirmed, so the operator can match it on the device.
        for r in sorted(regs, key=lambda r: (r.get("epoch") is None, r.get("epoch") or 0,
                                             str(r.get("name")))):
            epoch = r.get("epoch")
            record = data.records.get(epoch) if epoch is not None else None
            fp = wallet_fingerprint(EpochMultisig(record)) if record is not None else "-"
            if epoch is not None:
                label = Text(f"epoch {epoch}", style="green")
            elif r.get("not_epoch") is not None:  # named as an epoch's, holding other keys
                label = Text(f"NOT epoch {r['not_epoch']}", style="bold red")
            else:
                label = Text("other")
            table.add_row(
                label,
                fp,
                str(r.get("name")),
                f"{r.get('threshold')} of {r.get('num_signers')}",
                "yes" if r.get("sorted") else "no",
            )
