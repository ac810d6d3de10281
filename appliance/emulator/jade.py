"""The TCP server HWI's Jade client talks to, and the in-process JadeEmulator API.

HWI reaches a Jade emulator at "tcp:<host>:<port>" through jadepy's JadeTCPImpl
(hwilib/devices/jadepy/jade_tcp.py): one plain TCP stream carrying CBOR items.
hwilib/devices/jade.py probes tcp:127.0.0.1:30121 when emulators are allowed,
hence the default port. HWI opens and closes a connection for every command (and
enumerate opens two), so connections are served one after another, each by a
reader thread and a worker thread:

- the reader splits the stream into messages (wire.py), rejects malformed ones
  at once, and answers `ping` immediately even while the device is busy, as the
  firmware does ("this message is handled immediately", docs/index.rst);
- the worker hands every other request to the device, which serialises them
  under one lock, as the firmware's single main task does.

Never close a socket while the host awaits a reply: JadeTCPImpl.read() loops on
recv() and would spin on a closed socket. The server only closes on stop().
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

from appliance.emulator.confirm import ConfirmationHook, Prompt, WaitForButtons, hook_for
from appliance.emulator.device import DeviceOptions, JadeDevice
from appliance.emulator.errors import INVALID_REQUEST, RpcError
from appliance.emulator.exchange import ConnectionClosed
from appliance.emulator.multisig import MultisigRegistry
from appliance.emulator.networks import network_type
from appliance.emulator.psbt_signing import FIRMWARE_SCRIPT_LIMIT
from appliance.emulator.state import load_state
from appliance.emulator.wallet import Keychain
from appliance.emulator.wire import (
    STALE_TIMEOUT,
    Rejected,
    Request,
    StreamDecoder,
    encode_error,
    encode_result,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30121  # hwilib/devices/jade.py SIMULATOR_PATH


class _Connection:
    """One host connection: implements the Exchange a handler sees."""

    def __init__(self, device: JadeDevice, sock: socket.socket, stale_timeout: float) -> None:
        self.device = device
        self.sock = sock
        self.stale_timeout = stale_timeout
        self.inbox: queue.Queue[Request | None] = queue.Queue()
        self.write_lock = threading.Lock()
        self.current = Request("00", "")
        self.closed = threading.Event()

    # -- Exchange -------------------------------------------------------------------

    def reply(self, result: Any, seqnum: int | None = None, seqlen: int | None = None) -> None:
        self._send(encode_result(self.current.id, result, seqnum, seqlen))

    def reply_error(self, error: RpcError) -> None:
        self._send(encode_error(self.current.id, error.code, error.message, error.data))

    def reply_to(self, msg_id: str, result: Any) -> None:
        self._send(encode_result(msg_id, result))

    def next_message(self) -> Request:
        req = self.inbox.get()
        if req is None:
            self.inbox.put(None)  # keep the end-of-stream marker for the worker loop
            raise ConnectionClosed()
        self.device.method_counts[req.method] += 1
        self.current = req
        return req

    # -- threads ----------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        with self.write_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                log.info("host gone; reply dropped")

    def read_loop(self) -> None:
        decoder = StreamDecoder()
        last_data = time.monotonic()
        self.sock.settimeout(0.2)
        try:
            while not self.closed.is_set():
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    if decoder.buffer and time.monotonic() - last_data > self.stale_timeout:
                        stale = decoder.flush_stale()
                        if stale is not None:
                            self._route(stale)
                    continue
                except OSError:
                    break
                if not data:
                    break
                last_data = time.monotonic()
                for item in decoder.feed(data):
                    self._route(item)
        finally:
            self.inbox.put(None)

    def _route(self, item: Request | Rejected) -> None:
        if isinstance(item, Rejected):
            # wire.c SEND_REJECT_MSG: data is the rejected length as a string
            self._send(encode_error(item.reply_id, INVALID_REQUEST, item.message,
                                    str(item.length)))
            return
        if item.method == "ping":
            # 0 idle, 1 handling a message (docs/index.rst ping reply)
            self._send(encode_result(item.id, 1 if self.device.busy else 0))
            return
        if item.method == "get_version_info" and isinstance(item.params, dict) \
                and item.params.get("nonblocking"):
            self._send(encode_result(item.id, self.device._get_version_info(self, item)))
            return
        self.inbox.put(item)

    def work_loop(self) -> None:
        while True:
            req = self.inbox.get()
            if req is None:
                break
            self.current = req
            self.device.handle(self, req)

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class JadeEmulator:
    """A Jade that HWI drives over TCP. start() serves in background threads.

    Args:
        host, port: where to listen; port 0 picks a free port (start() returns it).
        mnemonic, passphrase: the wallet (else the one in the state file, if any).
        state_path: JSON file holding wallet, network pin and multisig registrations.
        network: 'mainnet', 'testnet' or 'localtest' pins the wallet's network type
            (MAIN or TEST) like a device set up for that network; None leaves it
            open until the first auth_user, as production firmware does.
        confirm: a confirmation hook, or 'approve' / 'refuse' / 'wait'.
        require_registration: refuse multisig inputs no registered wallet builds.
        firmware_script_limit: keep the firmware's 520-byte signing-script limit
            (False lets the emulator sign wsh multisigs of 16-20 keys, which a real
            Jade cannot).
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 mnemonic: str | None = None, passphrase: str | None = None,
                 state_path: str | Path | None = None, network: str | None = None,
                 confirm: ConfirmationHook | str = "approve",
                 require_registration: bool = False, firmware_script_limit: bool = True,
                 stale_timeout: float = STALE_TIMEOUT) -> None:
        if network is not None and network not in ("mainnet", "testnet", "localtest"):
            raise ValueError(f"network must be mainnet, testnet or localtest, not {network!r}")
        self.host = host
        self.requested_port = port
        self.stale_timeout = stale_timeout
        path = Path(state_path) if state_path is not None else None
        stored = load_state(path) if path is not None else None
        keychain = None
        if mnemonic is not None:
            keychain = Keychain.from_mnemonic(mnemonic, passphrase)
        elif stored is not None and stored.mnemonic:
            keychain = Keychain.from_mnemonic(stored.mnemonic, stored.passphrase)
        pinned = network_type(network) if network else (stored.network_type if stored else None)
        hook = hook_for(confirm) if isinstance(confirm, str) else confirm
        self.device = JadeDevice(
            keychain=keychain,
            registry=MultisigRegistry(stored.multisigs if stored else ()),
            network_type=pinned,
            confirm=hook,
            options=DeviceOptions(require_registration,
                                  FIRMWARE_SCRIPT_LIMIT if firmware_script_limit else None),
            state_path=path,
        )
        if path is not None and stored is not None:
            persisted = keychain.persistable if keychain else None
            if (not path.exists() or pinned != stored.network_type
                    or (persisted and persisted != (stored.mnemonic, stored.passphrase))):
                self.device.save()  # first run, or a new wallet/network given to us
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.port: int | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> int:
        """Bind and serve in a background thread; return the bound port."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._stopping.clear()
        self._server = socket.create_server((self.host, self.requested_port))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        thread = threading.Thread(target=self._accept_loop, name=f"jade-emu-{self.port}",
                                  daemon=True)
        thread.start()
        with self._lock:
            self._threads.append(thread)
        log.info("Jade emulator listening on %s:%s", self.host, self.port)
        return self.port

    def stop(self) -> None:
        """Close the listener and every connection; refuse any pending prompt."""
        self._stopping.set()
        hook = self.device.confirm_hook
        if isinstance(hook, WaitForButtons):
            hook.cancel_all()
        if self._server is not None:
            try:  # wakes the accept loop at once (close alone waits out its timeout)
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close()
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=5)
        self._server = None

    def serve_forever(self) -> None:
        """start() and block until stop() (the command-line server)."""
        self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        finally:
            self.stop()

    def __enter__(self) -> JadeEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- conveniences -----------------------------------------------------------------

    @property
    def path(self) -> str:
        """The HWI device path, e.g. 'tcp:127.0.0.1:30121'."""
        return f"tcp:{self.host}:{self.port}"

    @property
    def fingerprint(self) -> str | None:
        keychain = self.device.keychain
        return keychain.fingerprint.hex() if keychain else None

    @property
    def confirm_hook(self) -> ConfirmationHook:
        return self.device.confirm_hook

    @property
    def prompts(self) -> list[Prompt]:
        """Every prompt shown so far, oldest first (kind, details, accepted)."""
        return self.device.prompts

    @property
    def method_counts(self) -> dict[str, int]:
        return dict(self.device.method_counts)

    # -- server threads -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._server is not None
        server = self._server
        while not self._stopping.is_set():
            try:
                sock, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self.device, sock, self.stale_timeout)
            reader = threading.Thread(target=conn.read_loop, daemon=True,
                                      name=f"jade-emu-read-{self.port}")
            worker = threading.Thread(target=self._work, args=(conn,), daemon=True,
                                      name=f"jade-emu-work-{self.port}")
            with self._lock:
                self._connections.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()] + [reader, worker]
                reader.start()
                worker.start()

    def _work(self, conn: _Connection) -> None:
        try:
            conn.work_loop()
        finally:
            conn.close()
            with self._lock:
                self._connections.discard(conn)
