"""The message exchange a request handler sees: reply, and read the next message.

Multi-message flows (sign_psbt + get_extended_data, sign_tx + tx_input +
get_signature, anti-exfil sign_message + get_signature) read follow-up messages
mid-handler, as the firmware's jade_process_load_in_message() does. An error
raised by a handler is the reply to the *current* message, which is the last
one read (jade_process_reject_message uses process->ctx).
"""

from __future__ import annotations

from typing import Any, Protocol

from appliance.emulator.errors import RpcError
from appliance.emulator.wire import Request


class ConnectionClosed(Exception):
    """The host went away while a handler waited for its next message."""


class Exchange(Protocol):
    current: Request

    def reply(self, result: Any, seqnum: int | None = None, seqlen: int | None = None) -> None:
        """Send a result for the current message."""

    def reply_error(self, error: RpcError) -> None:
        """Send an error for the current message."""

    def reply_to(self, msg_id: str, result: Any) -> None:
        """Send a result for an earlier message (legacy batched tx_input replies)."""

    def next_message(self) -> Request:
        """Block for the host's next request and make it the current one."""
