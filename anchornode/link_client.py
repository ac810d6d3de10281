"""The node's side of its appliance's serial link."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bftanchor.link.messages import MsgType
from bftanchor.link.transport import LinkClient, LinkEndpoint, LinkError, LinkTimeout, open_serial
from bftanchor.signreply import SignReply

log = logging.getLogger("bft_anchor.node")


class LinkApplianceClient:
    """Sign requests over the link; a request held for the operator is asked again
    (answered from the appliance's cache or journal) until approval_wait runs out."""

    def __init__(
        self,
        port: str,
        secret: bytes | None = None,
        timeout: float = 20.0,
        approval_wait: float = 0.0,
        poll: float = 1.0,
    ) -> None:
        self.port_name = port
        self.secret = secret
        self.timeout = timeout
        self.approval_wait = approval_wait
        self.poll = poll
        self._lock = threading.Lock()
        self._client: LinkClient | None = None
        self.hello: dict[str, Any] | None = None
        # A port handed in already open (a pty master in tests and the devnet) belongs to
        # the caller: a failed exchange must not close it, or the link is gone for good
        # (and, for a pty master, the pair is torn down under the appliance).
        self._owns_port = isinstance(port, str)

    def _connect(self) -> LinkClient:
        if self._client is None:
            port = (open_serial(self.port_name) if isinstance(self.port_name, str)
                    else self.port_name)  # an already open port (a pty master in tests)
            client = LinkClient(LinkEndpoint(port, secret=self.secret), timeout=self.timeout)
            # The appliance may still be starting (or restarting): say hello briefly and
            # often rather than once with the long timeout of a signing request.
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    reply = client.request(MsgType.HELLO, {"protocol_version": 1},
                                           timeout=0.5, retries=0)
                    break
                except LinkTimeout:
                    if time.monotonic() >= deadline:
                        raise
            self.hello = reply.payload
            log.info(
                "appliance %s (device %s) on %s holds epochs %s",
                reply.payload.get("appliance_id"),
                reply.payload.get("device_fingerprint"),
                self.port_name,
                reply.payload.get("epochs"),
            )
            self._client = client
        return self._client

    def _drop(self) -> None:
        """Forget the session (the next request says hello again); close only a port we
        opened ourselves."""
        if self._client is not None and self._owns_port:
            try:
                self._client.endpoint.close()
            except Exception:
                pass
        self._client = None

    def request(self, msg_type: int, payload: dict[str, Any]) -> Any:
        with self._lock:
            try:
                return self._connect().request(msg_type, payload)
            except LinkError:
                self._drop()
                raise

    def sign(
        self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: list[str] | None
    ) -> SignReply:
        payload: dict[str, Any] = {"psbt": psbt_b64, "qc": qc_json, "records": records_json}
        if lineage:
            payload["lineage"] = lineage
        deadline = time.monotonic() + self.approval_wait
        while True:
            try:
                reply = self.request(MsgType.SIGN_REQUEST, payload)
            except LinkError as exc:
                return SignReply.refusal([f"appliance link: {exc}"])
            answer = SignReply.from_link(reply.type, reply.payload)
            if not answer.pending or time.monotonic() >= deadline:
                return answer
            time.sleep(self.poll)

    def status(self) -> dict[str, Any]:
        return dict(self.request(MsgType.STATUS_REQUEST, {}).payload)

    def install_record(self, record_json: Any) -> list[str]:
        reply = self.request(MsgType.INSTALL_RECORD, {"record": record_json})
        if reply.type == MsgType.INSTALL_REPLY:
            return []
        return list(reply.payload.get("reasons") or ["refused"])
