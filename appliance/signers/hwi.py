"""A signer on a hardware wallet, driven through HWI's own client code.

The device is found by master fingerprint (hwilib.commands.enumerate, emulators
only when configured) or by explicit type and path. Before signing, the epoch's
multisig is registered where the device needs it, so the coin's output shows as
change and not as an external payment; on a Jade under a name the operator can read
(deployment and epoch, Deployment.wallet_name) rather than HWI's hash name. Jade's PSBT
signing (firmware >= 0.1.47, the profile's minimum) signs by key match and, where it uses a
registration (change validation), finds it by content, not by name: the name is free to
choose. Only HWI's legacy path below 0.1.47 looks wallets up by HWI's name. Every signature
the device returns is checked against the expected key and sighash before it is handed
on: a device (or an emulator, or a cable) that returns garbage is caught here.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from embit import bip32
from embit.psbt import PSBT
from embit.script import address_to_scriptpubkey

from appliance.signers.base import (
    SignerError,
    epoch_path,
    require_sighash_all,
    with_own_input0_signatures,
)
from bftanchor.deployment import device_wallet_name
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import EpochRecord
from bftanchor.psbtread import read_psbt
from bftanchor.template import get_signature, put_signature

log = logging.getLogger("bft_anchor.signers.hwi")

# How each HWI device family takes a multisig wallet before it signs for it.
REGISTRATION = {
    "jade": "register_multisig",  # HWI registers via display_multisig_address
    "ledger": "bip388-wallet-policy",  # HWI registers the policy itself when signing
    "coldcard": "multisig-file",  # imported on the device from a file, not over HWI
}
JADE_WSH_VARIANT = "wsh(multi(k))"  # Jade's script variant of wsh(sortedmulti)
UNTAGGED = "bfa"  # the name's tag when the signer was made without its deployment


def jade_register(client: Any, name: str, multisig: EpochMultisig) -> str:
    """Register the epoch's wsh(sortedmulti) on a Jade under `name` (the device asks its
    user to approve it; re-registering the same record is a no-op) and return the address
    the device derives for it, as HWI's display_multisig_address does under its own name.

    A device that already holds the wallet under HWI's hash name (registered by HWI
    itself, or by an older bft-anchor) is not asked again, which would take a second of
    its 16 slots: the address it derives under that name is returned, and the caller's
    check of that address against the epoch's script covers the record's content."""
    from hwilib.devices.jade import JadeClient, jade_exception

    record = multisig.record
    signers = [{"fingerprint": v.fingerprint, "derivation": v.origin_path,
                "xpub": v.pow_key.split("]", 1)[1], "path": []} for v in record.validators]
    hwi_name = JadeClient._get_multisig_name(
        JADE_WSH_VARIANT, record.threshold, [(v.fingerprint, v.origin_path)
                                             for v in record.validators])

    @jade_exception  # the device's refusals become HWI's errors (ActionCanceledError, ...)
    def register_multisig(_: Any) -> str:
        network = client._network()
        held = client.jade.get_registered_multisigs() or {}
        use = hwi_name if hwi_name in held and name not in held else name
        if use == name:
            client.jade.register_multisig(network, name, JADE_WSH_VARIANT, True,
                                          record.threshold, signers)
        paths = [[0, 0] for _ in record.validators]
        return str(client.jade.get_receive_address(network, paths, multisig_name=use))

    return register_multisig(client)


def _chain_for(coin_type: int) -> Any:
    from hwilib.common import Chain

    return Chain.MAIN if coin_type in (0, 2) else Chain.TEST


def _still_connected(client: Any) -> bool:
    """False when a kept client's TCP link (an emulator) was closed by the other end: HWI's
    Jade TCP reader would wait for ever on a closed socket. Serial devices report an
    unplugged port themselves (an OSError, which closes the client)."""
    sock = getattr(getattr(getattr(getattr(client, "jade", None), "jade", None), "impl", None),
                   "tcp_sock", None)
    if sock is None:
        return True  # not a TCP link: nothing to look at
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return True  # nothing pending: the link is idle and open
        return sock.recv(1, socket.MSG_PEEK) != b""  # pending EOF: closed by the device
    except (OSError, ValueError):
        return False


class HWISigner:
    def __init__(
        self,
        fingerprint: bytes | None = None,
        device_type: str | None = None,
        device_path: str | None = None,
        coin_type: int = 1,
        allow_emulators: bool = False,
        password: str | None = None,
        wallet_tag: str | None = None,
    ) -> None:
        if fingerprint is None and not (device_type and device_path):
            raise SignerError("an HWI signer needs a fingerprint, or a device type and path")
        self._fingerprint = fingerprint
        self.device_type = device_type
        self.device_path = device_path
        self.coin_type = coin_type
        self.allow_emulators = allow_emulators
        self.password = password
        self.wallet_tag = wallet_tag or UNTAGGED  # Deployment.device_tag
        self._registered: set[str] = set()
        self._lock = threading.RLock()
        self._open: Any = None
        if self._fingerprint is None:
            with self._client() as client:
                self._fingerprint = bytes(client.get_master_fingerprint())

    @classmethod
    def from_config(cls, sc: Any, coin_type: int, wallet_tag: str | None = None) -> HWISigner:
        fp = bytes.fromhex(sc.fingerprint) if sc.fingerprint else None
        return cls(fp, sc.device_type, sc.device_path, coin_type, sc.allow_emulators,
                   sc.extra.get("password"), wallet_tag)

    def wallet_name(self, epoch: int) -> str:
        """The name epoch `epoch`'s multisig is registered under on this device."""
        return device_wallet_name(self.wallet_tag, epoch)

    @property
    def label(self) -> str:
        fp = self._fingerprint.hex() if self._fingerprint else "?"
        where = f" at {self.device_path}" if self.device_path else ""
        return f"{self.device_type or 'device'} {fp}{where}"

    @property
    def fingerprint(self) -> bytes:
        assert self._fingerprint is not None
        return self._fingerprint

    @contextmanager
    def _client(self) -> Iterator[Any]:
        """The device's HWI client, kept open between operations (opening one costs a few
        round trips: version, entropy, unlock) and used by one thread at a time. Any
        failure closes it, so a device unplugged in between is found again next time."""
        from hwilib.errors import HWWError

        with self._lock:
            try:
                if self._open is not None and not _still_connected(self._open):
                    self._close()
                if self._open is None:
                    self._open = self._connect()
                yield self._open
            except HWWError as exc:
                self._close()
                raise SignerError(self._explain(exc)) from exc
            except (OSError, ConnectionError) as exc:
                self._close()
                raise SignerError(
                    f"{self.label}: cannot connect ({exc}); is it plugged in?"
                ) from exc
            except SignerError:
                self._close()
                raise
            except Exception as exc:  # a device library's own error, outside HWI's wrapper
                self._close()
                raise SignerError(self._explain(exc)) from exc

    def _connect(self) -> Any:
        from hwilib import commands

        chain = _chain_for(self.coin_type)
        if self.device_type and self.device_path:
            client = commands.get_client(self.device_type, self.device_path,
                                         self.password, chain=chain)
        else:
            client = commands.find_device(
                self.password, self.device_type, self.fingerprint.hex(), chain=chain,
                allow_emulators=self.allow_emulators,
            )
        if client is None:
            raise SignerError(
                f"{self.label}: not found. Plug it in and unlock it"
                + ("" if self.allow_emulators else " (emulators are not allowed)")
            )
        if self.device_type is None:
            self.device_type = type(client).__name__.removesuffix("Client").lower()
        return client

    def _close(self) -> None:
        client, self._open = self._open, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a vanished device must not mask the cause
                pass

    def close(self) -> None:
        with self._lock:
            self._close()

    def _with_client(self, action: Any) -> Any:
        """action(client), once more on a fresh connection when a kept one had gone stale
        (the device was unplugged and plugged in again since the last operation)."""
        from hwilib.errors import DeviceConnectionError

        for attempt in (0, 1):
            kept = self._open is not None
            try:
                with self._client() as client:
                    return action(client)
            except SignerError as exc:
                stale = isinstance(exc.__cause__, (OSError, ConnectionError, DeviceConnectionError))
                if attempt or not (kept and stale):
                    raise
        raise AssertionError("unreachable")

    def _explain(self, exc: Exception) -> str:
        from hwilib.errors import (
            ActionCanceledError,
            BadArgumentError,
            DeviceConnectionError,
            DeviceNotReadyError,
            UnknownDeviceError,
        )

        msg = getattr(exc, "message", None) or str(exc)
        if "network" in msg.lower() and not isinstance(exc, ActionCanceledError):
            return f"{self.label} refused the network: check the device's network setting ({msg})"
        if isinstance(exc, ActionCanceledError):
            return f"refused on device {self.label}: {msg}"
        if isinstance(exc, DeviceNotReadyError):
            return f"{self.label} is not ready (locked or uninitialised): unlock it. ({msg})"
        if isinstance(exc, DeviceConnectionError):
            if "locked" in msg.lower():
                return f"{self.label} is locked: unlock it with its PIN"
            if "network" in msg.lower() or "chain" in msg.lower():
                return f"{self.label} refused the network: check the device's network setting"
            return f"{self.label}: connection error: {msg}"
        if isinstance(exc, UnknownDeviceError):
            return f"{self.label}: unknown device type {self.device_type!r}"
        if isinstance(exc, BadArgumentError):
            return f"{self.label} rejected the request: {msg}"
        return f"{self.label}: {type(exc).__name__}: {msg}"

    def cannot_sign(self, record: EpochRecord) -> list[str]:
        """Why this device cannot sign in the record's epoch ([]: it can, as profiled)."""
        if not record.is_taproot:
            return []
        from appliance.devices.profiles import tapscript_reasons

        return tapscript_reasons(self.device_type or "", record.n, self.label)

    def cannot_sign_script(self, script: str) -> list[str]:
        """Why this device cannot sign any epoch of `script` ([]: it can, as profiled); asked
        when the operator shares the key, before any record exists."""
        if script != "tr-sortedmulti_a":
            return []
        from appliance.devices.profiles import tapscript_reasons

        return tapscript_reasons(self.device_type or "", 21, self.label)

    def pow_key(self, epoch: int, script_type: int = 2) -> str:
        from hwilib import commands

        path = epoch_path(self.coin_type, epoch, script_type)
        with self._client() as client:
            xpub = commands.getxpub(client, path)["xpub"]
        key = bip32.HDKey.from_string(xpub)
        version = bip32.NETWORKS["main" if self.coin_type in (0, 2) else "test"]["xpub"]
        return f"[{self.fingerprint.hex()}/{path[2:]}]{key.to_base58(version=version)}"

    def register(self, multisig: EpochMultisig) -> str | None:
        """Register the epoch's multisig where the device needs it; return the address shown."""
        reasons = self.cannot_sign(multisig.record)
        if reasons:
            raise SignerError(reasons[0])
        desc = multisig.descriptor()
        if desc in self._registered:
            return None
        from hwilib import commands

        with self._client() as client:
            kind = REGISTRATION.get(self.device_type or "", "none")
            if kind == "register_multisig":
                if getattr(client, "jade", None) is not None:
                    address = jade_register(client, self.wallet_name(multisig.epoch), multisig)
                else:
                    address = commands.displayaddress(client, desc=desc)["address"]
                if address_to_scriptpubkey(address) != multisig.script_pubkey:
                    raise SignerError(
                        f"{self.label} registered the multisig but shows address {address}, "
                        "which is not the epoch's script: refusing to use this device"
                    )
                log.info("registered epoch %d multisig on %s as %s", multisig.epoch, self.label,
                         self.wallet_name(multisig.epoch))
            elif kind == "multisig-file":
                raise SignerError(
                    f"{self.label} registers a multisig only from a file imported on the device "
                    f"(Settings > Multisig Wallets), which HWI cannot do: import epoch "
                    f"{multisig.epoch}'s multisig there first"
                )
            else:
                address = None
        self._registered.add(desc)
        return address

    def sign(self, psbt: PSBT, multisig: EpochMultisig) -> PSBT:
        require_sighash_all(psbt)
        from hwilib import commands

        reasons = self.cannot_sign(multisig.record)
        if reasons:
            raise SignerError(reasons[0])
        mine = [k for k in multisig.keys if k.fingerprint == self.fingerprint]
        st = multisig.record.script_type
        expected = list(bip32.parse_path(epoch_path(self.coin_type, multisig.epoch, st))) + [0, 0]
        mine = [k for k in mine if list(k.path) == expected]
        if not mine:
            raise SignerError(
                f"{self.label} holds no key of epoch {multisig.epoch}'s multisig"
            )
        self.register(multisig)
        b64 = psbt.to_string()
        result = self._with_client(lambda client: commands.signtx(client, b64))
        try:
            signed = read_psbt(result["psbt"])
        except Exception as exc:
            raise SignerError(f"{self.label} returned a PSBT that does not parse: {exc}") from exc
        if signed.tx.txid() != psbt.tx.txid():
            raise SignerError(f"{self.label} returned a different transaction")
        key = mine[0]
        sig = get_signature(signed, 0, multisig, key.pubkey)
        if sig is None:
            raise SignerError(f"{self.label} returned no signature for the coin input")
        # Not verified here: the appliance checks every signature a signer returns against
        # the sighash before it leaves (Appliance.handle_sign), this device's included.
        out = with_own_input0_signatures(psbt)
        put_signature(out, 0, multisig, key.pubkey, sig)
        return out
