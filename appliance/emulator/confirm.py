"""Stand-ins for the device's buttons: whoever answers the on-screen prompts.

The firmware blocks a request on a confirmation screen before it signs a PSBT
(sign_psbt.c: outputs then fee), a legacy transaction (sign_tx.c), a message
(sign_message.c), registers a multisig (register_multisig.c) or returns an
address (get_receive_address.c). A refusal there is CBOR_RPC_USER_CANCELLED.

A hook is any callable taking a Prompt and returning True (accept) or False.
Three are provided: ApproveAll, RefuseAll, and WaitForButtons, which parks each
prompt until a test (or an operator) presses approve/refuse.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Prompt:
    """What the screen would show. `kind` is the request's method name."""

    kind: str
    details: dict[str, Any]
    _decided: threading.Event = field(default_factory=threading.Event, repr=False)
    _accepted: bool = field(default=False, repr=False)

    def approve(self) -> None:
        self._decide(True)

    def refuse(self) -> None:
        self._decide(False)

    def _decide(self, accepted: bool) -> None:
        if not self._decided.is_set():
            self._accepted = accepted
            self._decided.set()

    @property
    def decided(self) -> bool:
        return self._decided.is_set()

    @property
    def accepted(self) -> bool:
        return self._accepted


class ConfirmationHook(Protocol):
    def __call__(self, prompt: Prompt) -> bool: ...


class ApproveAll:
    """Every prompt is accepted at once (an unattended device)."""

    def __call__(self, prompt: Prompt) -> bool:
        return True


class RefuseAll:
    """Every prompt is declined at once."""

    def __call__(self, prompt: Prompt) -> bool:
        return False


class WaitForButtons:
    """Each prompt waits until approve()/refuse() is called, like a person at the device.

    `timeout` bounds the wait (None waits for ever, as the device does); a prompt
    that times out, or is pending when the emulator stops, counts as refused.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self._cond = threading.Condition()
        self._pending: deque[Prompt] = deque()

    def __call__(self, prompt: Prompt) -> bool:
        with self._cond:
            self._pending.append(prompt)
            self._cond.notify_all()
        decided = prompt._decided.wait(self.timeout)
        with self._cond:
            if prompt in self._pending:
                self._pending.remove(prompt)
        return decided and prompt.accepted

    def next_prompt(self, timeout: float = 10.0) -> Prompt:
        """The oldest prompt on screen, waiting up to `timeout` for one to appear."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._pending), timeout):
                raise TimeoutError("no confirmation prompt appeared")
            return self._pending[0]

    def approve(self, timeout: float = 10.0) -> Prompt:
        prompt = self.next_prompt(timeout)
        prompt.approve()
        return prompt

    def refuse(self, timeout: float = 10.0) -> Prompt:
        prompt = self.next_prompt(timeout)
        prompt.refuse()
        return prompt

    def cancel_all(self) -> None:
        """Refuse whatever is pending (used when the emulator stops)."""
        with self._cond:
            for prompt in list(self._pending):
                prompt.refuse()


def hook_for(mode: str, timeout: float | None = None) -> ConfirmationHook:
    """The hook for a --confirm mode: approve, refuse or wait."""
    if mode == "approve":
        return ApproveAll()
    if mode == "refuse":
        return RefuseAll()
    if mode == "wait":
        return WaitForButtons(timeout)
    raise ValueError(f"unknown confirmation mode {mode!r}")
