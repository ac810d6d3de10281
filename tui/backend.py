"""What the operator's console talks to: one appliance, in this process or over its socket.

Two implementations of one interface, so every screen works the same either way:

- InProcessBackend runs the appliance (ApplianceService) inside the console, and can
  serve its serial link too (`--link`);
- RemoteBackend attaches to a running `bft-anchor appliance serve` through its control
  socket (`--control`).

The device itself (HWI) is always reached from this process, through the signer the
appliance's config names: HWI opens a fresh client per operation, so the console can
read the device and register wallets on it between the appliance's signatures. Every
method may block (device, socket, journal): the app calls them from worker threads, and
every failure is raised as BackendError (or SignerError) with a message for a person.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.api import (
    ApplianceConfig,
    ApplianceService,
    HWISigner,
    Signer,
    SignerError,
    cannot_sign,
    control_call,
    load_profiles,
    make_signer,
    match_profile,
    open_appliance,
)
from bftanchor.deployment import Deployment
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError

log = logging.getLogger("bft_anchor.tui")

JADE_VARIANT = "wsh(multi(k))"  # how HWI's Jade client names a wsh multisig registration


class BackendError(Exception):
    """The appliance could not do what was asked; the message says why."""


@dataclass
class StatusView:
    """What the status bar shows, from either backend."""

    mode: str
    fingerprint: str
    journal_head: dict[str, Any]
    expected_coins: list[dict[str, Any]]
    epochs: list[int]
    pending: int
    link: bool | None  # None: this console does not know (no link served here)
    link_error: str | None = None
    last_signature: float | None = None

    @property
    def current_epoch(self) -> int:
        """The epoch whose multisig holds the coin this appliance expects to spend."""
        epochs = [int(c["epoch"]) for c in self.expected_coins if c.get("epoch") is not None]
        return max(epochs) if epochs else min(self.epochs or [0])


@dataclass
class DeviceView:
    """What HWI sees of the signing device, and what its firmware profile allows."""

    connected: bool
    kind: str  # "hwi" or "software"
    fingerprint: str | None = None
    device_type: str | None = None
    model: str | None = None
    path: str | None = None
    firmware: str | None = None
    profile: str | None = None
    profile_name: str | None = None
    error: str | None = None
    capability: dict[int, list[str]] = field(default_factory=dict)  # epoch -> reasons
    registered: list[dict[str, Any]] | None = None
    registered_note: str | None = None


def last_signature_ts(history: list[dict[str, Any]]) -> float | None:
    for d in history:
        if d.get("decision") == "signed":
            return float(d["ts"])
    return None


def jade_registration_name(record: EpochRecord) -> str:
    """The name HWI's Jade client registers this epoch's multisig under (deterministic)."""
    from hwilib.devices.jade import JadeClient

    signers = [(v.fingerprint, v.origin_path) for v in record.validators]
    return JadeClient._get_multisig_name(JADE_VARIANT, record.threshold, signers)


def holds_record(details: Any, record: EpochRecord) -> bool:
    """Whether a Jade registration (get_registered_multisig's reply) is the record's
    wsh(sortedmulti): its threshold and its signers' public keys, whatever xpub version
    the device returns them in."""
    from embit import bip32

    try:
        desc = details["descriptor"]
        keys = sorted(bip32.HDKey.from_string(s["xpub"]).key.sec() for s in desc["signers"])
        ok = desc["threshold"] == record.threshold and bool(desc.get("sorted"))
    except (KeyError, TypeError, ValueError):
        return False
    mine = sorted(bip32.HDKey.from_string(v.pow_key.split("]", 1)[1]).key.sec()
                  for v in record.validators)
    return ok and keys == mine


class Backend:
    """The console's one appliance: the common half (deployment, signer, device)."""

    kind = "?"

    def __init__(self, deployment: Deployment, signer: Signer, validator_id: str) -> None:
        self.deployment = deployment
        self.signer = signer
        self.validator_id = validator_id

    @property
    def chain(self) -> str:
        return self.deployment.chain

    @property
    def magic(self) -> bytes:
        return self.deployment.magic

    def _device_lock(self) -> AbstractContextManager[Any]:
        """Held around device use so it does not interleave with a signature."""
        return nullcontext()

    # --- the appliance (each backend) ---------------------------------------------------

    def status(self) -> StatusView:
        raise NotImplementedError

    def pending(self) -> list[dict[str, Any]]:
        """Held requests in full: id, created, psbt, qc, records, verdict."""
        raise NotImplementedError

    def approve(self, rid: str) -> dict[str, Any]:
        raise NotImplementedError

    def refuse(self, rid: str, reason: str | None = None) -> None:
        raise NotImplementedError

    def set_mode(self, mode: str) -> None:
        raise NotImplementedError

    def history(self, limit: int = 500) -> list[dict[str, Any]]:
        raise NotImplementedError

    def records(self) -> dict[int, EpochRecord]:
        raise NotImplementedError

    def install_record(self, record_json: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # --- the device (common) ------------------------------------------------------------

    def pow_key(self, epoch: int) -> str:
        with self._device_lock():
            return self.signer.pow_key(epoch)

    def register(self, multisig: EpochMultisig) -> str | None:
        """Register the multisig on the device; returns the address it showed (None: the
        signer needs no registration, e.g. software keys)."""
        register = getattr(self.signer, "register", None)
        if register is None:
            return None
        with self._device_lock():
            return register(multisig)

    def device(self, records: dict[int, EpochRecord], epochs: list[int]) -> DeviceView:
        """Read the device; never raises for a missing device (connected=False says so)."""
        signer = self.signer
        if not isinstance(signer, HWISigner):
            view = DeviceView(
                connected=True,
                kind="software",
                fingerprint=signer.fingerprint.hex(),
                model="software keys (no hardware wallet)",
                registered_note="software keys need no wallet registration",
            )
            for e in epochs:
                if e in records:
                    view.capability[e] = cannot_sign(records[e], view.fingerprint, hardware=False)
            return view
        view = DeviceView(connected=False, kind="hwi", path=signer.device_path)
        try:
            with self._device_lock(), signer._client() as client:  # the signer's own errors
                view.fingerprint = bytes(client.get_master_fingerprint()).hex()
                fw = getattr(client, "fw_version", None)
                view.firmware = str(fw) if fw is not None else None
                jade = getattr(client, "jade", None)
                if jade is not None:
                    regs = jade.get_registered_multisigs() or {}
                    # Named by this signer (deployment and epoch) or by HWI's own hash.
                    names = {jade_registration_name(r): e for e, r in records.items()}
                    names.update({signer.wallet_name(e): e for e in records})
                    view.registered = []
                    for name, info in sorted(regs.items()):
                        epoch = names.get(name)
                        entry = {"name": name, "epoch": epoch, **dict(info)}
                        # A name is a claim: the wallet is the epoch's only if its keys are.
                        if epoch is not None and not holds_record(
                            jade.get_registered_multisig(name), records[epoch]
                        ):
                            entry["epoch"], entry["not_epoch"] = None, epoch
                        view.registered.append(entry)
                else:
                    view.registered_note = (
                        "HWI cannot list the wallets registered on this device type"
                    )
            view.connected = True
        except SignerError as exc:
            view.error = str(exc)
            return view
        view.device_type = signer.device_type
        path = signer.device_path or ""
        view.model = (view.device_type or "?") + ("_simulator" if path.startswith("tcp:") else "")
        profile = None
        try:
            profile = match_profile(view.device_type or "", view.model, view.firmware,
                                    profiles=load_profiles())
        except Exception as exc:  # a broken profile directory is shown, not fatal
            view.error = f"firmware profiles: {exc}"
        if profile is not None:
            view.profile, view.profile_name = profile.id, profile.name
        for e in epochs:
            rec = records.get(e)
            if rec is None:
                continue
            view.capability[e] = cannot_sign(
                rec,
                view.fingerprint,
                profile=profile,
                device=f"{view.device_type} {view.model}",
                firmware=view.firmware,
            )
        return view

    def probe_device(self) -> str:
        """Connect to the device and read its fingerprint (SignerError if it is gone)."""
        if not isinstance(self.signer, HWISigner):
            return self.signer.fingerprint.hex()
        with self._device_lock(), self.signer._client() as client:
            return bytes(client.get_master_fingerprint()).hex()


class InProcessBackend(Backend):
    """The appliance runs inside the console (and may serve its link from here)."""

    kind = "in-process"

    def __init__(self, service: ApplianceService) -> None:
        appliance = service.appliance
        super().__init__(appliance.deployment, appliance.signer, service.appliance_id)
        self.service = service
        self.link_port: str | None = None
        self.link_error: str | None = None
        self._link_thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, config_path: Path) -> InProcessBackend:
        cfg = ApplianceConfig.load(config_path)
        appliance = open_appliance(cfg)
        return cls(ApplianceService(appliance, cfg.validator_id or "appliance", cfg.approval))

    def serve_link(self, port: str, secret: bytes | None = None) -> None:
        """Answer the node on the serial link from a background thread."""
        self.link_port = port

        def run() -> None:
            try:
                self.service.serve_link(port, secret)
            except Exception as exc:  # shown in the status bar and as a notification
                self.link_error = f"link {port}: {exc}"
                log.warning("%s", self.link_error)

        self._link_thread = threading.Thread(target=run, name="tui-link", daemon=True)
        self._link_thread.start()

    def _device_lock(self) -> AbstractContextManager[Any]:
        # The appliance holds the journal's lock for a whole decision, signature included.
        return self.service.appliance.journal.lock

    def status(self) -> StatusView:
        s = self.service.status()
        return StatusView(
            mode=s["approval_mode"],
            fingerprint=s["fingerprint"],
            journal_head=s["journal_head"],
            expected_coins=s["expected_coins"],
            epochs=s["epochs"],
            pending=len(s["pending"]),
            link=self.service.link_connected if self.link_port else None,
            link_error=self.link_error,
            last_signature=last_signature_ts(self.history(200)),
        )

    def pending(self) -> list[dict[str, Any]]:
        return [self.service.pending_detail(i) for i in self.service.queue.pending()]

    def approve(self, rid: str) -> dict[str, Any]:
        try:
            return self.service.queue.approve(rid)
        except KeyError as exc:
            raise BackendError(str(exc.args[0] if exc.args else exc)) from exc

    def refuse(self, rid: str, reason: str | None = None) -> None:
        try:
            self.service.queue.refuse(rid, reason)
        except KeyError as exc:
            raise BackendError(str(exc.args[0] if exc.args else exc)) from exc

    def set_mode(self, mode: str) -> None:
        try:
            self.service.queue.set_mode(mode)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc

    def history(self, limit: int = 500) -> list[dict[str, Any]]:
        return self.service.appliance.journal.decisions(limit)

    def records(self) -> dict[int, EpochRecord]:
        return self.service.appliance.held_records()

    def install_record(self, record_json: dict[str, Any]) -> list[str]:
        return self.service.appliance.install_record(record_json)

    def close(self) -> None:
        self.service.stop_event.set()
        if self._link_thread is not None:
            self._link_thread.join(timeout=2)


class RemoteBackend(Backend):
    """A running `bft-anchor appliance serve`, reached through its control socket."""

    kind = "attached"

    def __init__(
        self, control: Path, deployment: Deployment, signer: Signer, validator_id: str,
        timeout: float = 10.0,
        sign_timeout: float = 300.0,
    ) -> None:
        super().__init__(deployment, signer, validator_id)
        self.control = Path(control)
        self.timeout = timeout
        self.sign_timeout = sign_timeout  # approving waits for the device's buttons
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config_path: Path, control: Path) -> RemoteBackend:
        from bftanchor.epoch import HARDENED

        cfg = ApplianceConfig.load(config_path)
        deployment = Deployment.load(cfg.deployment)
        coin_type = deployment.epoch0.validators[0].origin_path[1] - HARDENED
        backend = cls(control, deployment, make_signer(cfg, coin_type, deployment),
                      cfg.validator_id)
        try:
            backend.check_identity()
        except BackendError as exc:
            if backend.mismatch:  # the wrong appliance: refuse to start
                raise
            log.warning("%s (checked when it answers)", exc)  # not up yet: shown as down
        return backend

    mismatch: str | None = None
    _identity_checked = False

    def check_identity(self) -> None:
        """Refuse a socket whose appliance is not the one the config names: the console
        would show one appliance's identity and device and approve another's queue.
        Every other call checks it first, until it has been checked once."""
        s = self._raw_call({"cmd": "status"})["status"]
        mine = {"validator_id": self.validator_id,
                "genesis": str(self.deployment.genesis.outpoint),
                "chain": self.deployment.chain}
        fp = getattr(self.signer, "_fingerprint", None)
        if fp is None and not hasattr(self.signer, "_fingerprint"):
            fp = self.signer.fingerprint  # software keys: known without a device
        if fp is not None:
            mine["fingerprint"] = fp.hex()
        wrong = [f"{k} {s.get(k)!r} (the config's is {v!r})" for k, v in mine.items()
                 if k in s and s.get(k) != v]
        if wrong:
            self.mismatch = (f"the appliance on {self.control} is not the one the config "
                             "names: " + "; ".join(wrong))
            raise BackendError(self.mismatch)
        self._identity_checked = True

    def _device_lock(self) -> AbstractContextManager[Any]:
        return self._lock

    def _call(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        if self.mismatch:
            raise BackendError(self.mismatch)
        if not self._identity_checked:
            self.check_identity()
        return self._raw_call(request, timeout)

    def _raw_call(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        try:
            reply = control_call(self.control, request, timeout=timeout or self.timeout)
        except (OSError, ValueError) as exc:
            raise BackendError(f"appliance control socket {self.control}: {exc}") from exc
        if not reply.get("ok") and "error" in reply:
            raise BackendError(str(reply["error"]))
        return reply

    def status(self) -> StatusView:
        reply = self._call({"cmd": "status"})
        s = reply["status"]
        return StatusView(
            mode=s.get("approval_mode", "?"),
            fingerprint=s.get("fingerprint", "?"),
            journal_head=s.get("journal_head") or {},
            expected_coins=s.get("expected_coins") or [],
            epochs=s.get("epochs") or [],
            pending=len(s.get("pending") or []),
            link=reply.get("link_connected"),
            last_signature=last_signature_ts(self.history(200)),
        )

    def pending(self) -> list[dict[str, Any]]:
        return list(self._call({"cmd": "pending", "full": True})["pending"])

    def approve(self, rid: str) -> dict[str, Any]:
        return dict(self._call({"cmd": "approve", "id": rid}, self.sign_timeout)["outcome"])

    def refuse(self, rid: str, reason: str | None = None) -> None:
        self._call({"cmd": "refuse", "id": rid, **({"reason": reason} if reason else {})})

    def set_mode(self, mode: str) -> None:
        self._call({"cmd": "mode", "mode": mode})

    def history(self, limit: int = 500) -> list[dict[str, Any]]:
        return list(self._call({"cmd": "history", "limit": limit})["history"])

    def records(self) -> dict[int, EpochRecord]:
        try:
            raw = self._call({"cmd": "records"})["records"]
        except BackendError:  # an appliance without the command: at least epoch 0
            return {self.deployment.epoch0.epoch: self.deployment.epoch0}
        out: dict[int, EpochRecord] = {}
        for r in raw:
            try:
                rec = EpochRecord.from_json(r)
            except CheckpointError as exc:
                raise BackendError(
                    f"the appliance holds a record that does not parse: {exc}"
                ) from exc
            out[rec.epoch] = rec
        return out

    def install_record(self, record_json: dict[str, Any]) -> list[str]:
        reply = self._call({"cmd": "install-record", "record": record_json})
        return list(reply.get("problems") or [])
