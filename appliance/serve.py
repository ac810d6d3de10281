"""`bft-anchor appliance serve`: the headless appliance on its serial link.

It answers the node's link requests (hello, sign, status, install record) and, for
the operator, a local control socket (JSON lines): list and decide pending
requests, switch the approval mode, read the journal. The control socket is a
UNIX socket with mode 0600: it is reachable only from the appliance itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

from appliance.approvals import ApprovalQueue, PendingRequest
from appliance.signing import Appliance
from bftanchor.link.frame import PROTOCOL_VERSION
from bftanchor.link.messages import MsgType
from bftanchor.link.transport import (
    BadMessage,
    LinkEndpoint,
    LinkServer,
    open_serial,
)

log = logging.getLogger("bft_anchor.appliance")

LINK_EVENTS_PER_MINUTE = 60


class ApplianceService:
    def __init__(self, appliance: Appliance, appliance_id: str, mode: str = "auto") -> None:
        self.appliance = appliance
        self.appliance_id = appliance_id
        # Fold the last run's WAL into the journal now, before any request: while serving,
        # the journal never checkpoints (see Journal's wal_autocheckpoint), so a copy of
        # its files taken at any moment is consistent. Then reserve room in the new WAL and
        # start the helper processes (the WAL's fsync, the QC's signatures).
        appliance.prepare_to_serve()
        self.queue = ApprovalQueue(appliance, mode)
        self.stop_event = threading.Event()
        self.link_connected = False
        self._event_window = time.monotonic()
        self._events_logged = 0
        self._events_dropped = 0

    # --- the link ----------------------------------------------------------------

    def handle(self, msg_type: int, payload: dict[str, Any], request_id: int) -> tuple:
        if msg_type == MsgType.HELLO:
            return MsgType.HELLO_REPLY, {
                "protocol_version": PROTOCOL_VERSION,
                "appliance_id": self.appliance_id,
                "device_fingerprint": self.appliance.signer.fingerprint.hex(),
                "epochs": sorted(self.appliance.held_records()),
            }
        if msg_type == MsgType.SIGN_REQUEST:
            reply = self.queue.submit(
                payload["psbt"], payload["qc"], payload["records"], payload.get("lineage")
            )
            return reply.to_link(request_id)
        if msg_type == MsgType.STATUS_REQUEST:
            return MsgType.STATUS_REPLY, self.status()
        if msg_type == MsgType.INSTALL_RECORD:
            problems = self.appliance.install_record(payload["record"])
            if problems:
                return MsgType.REFUSAL, {"reasons": problems}
            return MsgType.INSTALL_REPLY, {"epoch": int(payload["record"]["epoch"])}
        raise ValueError(f"unexpected request type {msg_type}")

    def _link_event(self, event: Any) -> None:
        """Log link trouble, rate-limited: noise on the line must not fill the disk. A sign
        request that does not even read (its PSBT not base64, its records not objects) is
        a refusal like any other: journaled (rate-limited too) with what was wrong."""
        if isinstance(event, BadMessage) and event.frame_type == MsgType.SIGN_REQUEST:
            self.appliance.refuse_request([f"the sign request does not read: {event.error}"])
        now = time.monotonic()
        if now - self._event_window >= 60.0:
            if self._events_dropped:
                log.warning("link: %d further event(s) in the last minute not logged",
                            self._events_dropped)
            self._event_window, self._events_logged, self._events_dropped = now, 0, 0
        if self._events_logged < LINK_EVENTS_PER_MINUTE:
            self._events_logged += 1
            log.warning("link: %s", str(event.message)[:300])
        else:
            self._events_dropped += 1

    def status(self) -> dict[str, Any]:
        s = self.appliance.status()
        s["approval_mode"] = self.queue.mode
        s["pending"] = [i.to_json() for i in self.queue.pending()]
        # Who this is, so a console attached by socket can refuse the wrong appliance.
        s["validator_id"] = self.appliance_id
        s["genesis"] = str(self.appliance.deployment.genesis.outpoint)
        s["chain"] = self.appliance.deployment.chain
        return s

    def pending_detail(self, item: PendingRequest) -> dict[str, Any]:
        """A held request in full with the policy's verdict as of now: what the operator's
        console decodes, and why approval may no longer be possible."""
        verdict, _, _ = self.appliance.decide(item.psbt, item.qc, item.records, item.lineage)
        return {
            **item.to_json(),
            "psbt": item.psbt,
            "qc": item.qc,
            "records": item.records,
            "lineage": item.lineage,
            "verdict": {"ok": verdict.ok, "reasons": verdict.reasons, "summary": verdict.summary},
        }

    def serve_link(self, port: str, secret: bytes | None = None) -> None:
        ser = open_serial(port)
        endpoint = LinkEndpoint(ser, secret=secret)
        server = LinkServer(endpoint, on_event=self._link_event)
        self.link_connected = True
        log.info("appliance %s serving on %s", self.appliance_id, port)
        try:
            server.serve_forever(self.handle, self.stop_event)
        finally:
            self.link_connected = False
            ser.close()

    # --- the operator's control socket --------------------------------------------------

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        try:
            if cmd == "status":
                return {"ok": True, "status": self.status(), "link_connected": self.link_connected}
            if cmd == "pending":
                if request.get("full"):  # the operator's console decodes each request
                    return {"ok": True, "pending": [self.pending_detail(i)
                                                    for i in self.queue.pending()]}
                return {"ok": True, "pending": [i.to_json() for i in self.queue.pending()]}
            if cmd == "records":
                held = self.appliance.held_records()
                return {"ok": True, "records": [held[e].to_json() for e in sorted(held)]}
            if cmd == "approve":
                return {"ok": True, "outcome": self.queue.approve(str(request["id"]))}
            if cmd == "refuse":
                reason = request.get("reason")
                self.queue.refuse(str(request["id"]), str(reason) if reason else None)
                return {"ok": True}
            if cmd == "mode":
                self.queue.set_mode(str(request["mode"]))
                return {"ok": True, "mode": self.queue.mode}
            if cmd == "history":
                return {
                    "ok": True,
                    "history": self.appliance.journal.decisions(int(request.get("limit", 100))),
                }
            if cmd == "install-record":
                problems = self.appliance.install_record(request["record"])
                return {"ok": not problems, "problems": problems}
        except (KeyError, ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def serve_control(self, path: Path) -> socketserver.UnixStreamServer:
        service = self
        path = Path(path)
        if path.exists():
            path.unlink()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    try:
                        reply = service.control(json.loads(line))
                    except ValueError as exc:
                        reply = {"ok": False, "error": f"not JSON: {exc}"}
                    self.wfile.write((json.dumps(reply, default=str) + "\n").encode())
                    self.wfile.flush()

        old = os.umask(0o177)
        try:
            server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        finally:
            os.umask(old)
        server.daemon_threads = True
        # shutdown() waits for the loop's next poll: 0.1 s, not socketserver's 0.5 s.
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
        return server


def control_call(path: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request to a running appliance's control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)
