"""A helper process that verifies a QC's signatures while the appliance reads the rest of
the request.

A serving appliance sends the QC's (key, digest, signature) triples here as soon as it
has parsed the QC, then reads the PSBT and judges the transaction; the policy asks for
the signatures' verdict last (policy.evaluate). libsecp256k1 releases the GIL, but the
Python around it does not, and the PSBT's parsing is all Python: a second thread of the
appliance would wait for the GIL most of the time, a second process does not.

The helper only ever says "every one of these verifies"; anything else (some do not, no
answer, an answer to another request, an answer for other triples) and the appliance
verifies them itself, so a refusal names the first bad signature as it always did. The
protocol: one byte "R" from the helper once it has started (until then the appliance
verifies alone: no request waits for the helper's imports); then a request number, a
count and the triples (33 + 32 + 64 bytes each) down the helper's stdin, and the number
and one byte (1: all verify) back on its stdout.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
from collections.abc import Sequence

from appliance.helperproc import HelperProcess
from bftanchor.bftsig import PARALLEL_FROM, verify_each

log = logging.getLogger("bft_anchor.appliance")

HELPER = r"""
import json, os, signal, struct, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the appliance's to handle
sys.path[:0] = json.loads(sys.argv[1])
from bftanchor.bftsig import verify_compact
os.write(1, b"R")  # ready: the appliance sends nothing before it has read this

def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data

while True:
    number, count = struct.unpack("<IH", read(6))
    raw = read(count * 129)
    ok = 1
    for i in range(0, len(raw), 129):
        try:
            verify_compact(raw[i:i + 33], raw[i + 33:i + 65], raw[i + 65:i + 129])
        except Exception:
            ok = 0
            break
    os.write(1, struct.pack("<IB", number, ok))
"""

Item = tuple[bytes, bytes, bytes]
_HEAD = struct.Struct("<IH")
_ANSWER = struct.Struct("<IB")
# A QC's signatures are the epoch's validators' at most; a request beyond this is not sent.
MAX_ITEMS = 1000
# An answer slower than this means the helper is stuck: it is dropped, and the appliance
# verifies itself.
ANSWER_TIMEOUT_S = 2.0


def _kept(count: int) -> int:
    """How many of a QC's signatures the appliance verifies itself: none of a few (the
    helper is done before the policy asks), a third from PARALLEL_FROM on (the helper
    would still be busy; bench: appliance_decision, n = 4 and n = 15)."""
    return count // 3 if count >= PARALLEL_FROM else 0


def _sendable(items: Sequence[Item]) -> bool:
    return 0 < len(items) <= MAX_ITEMS and all(
        len(p) == 33 and len(d) == 32 and len(s) == 64 for p, d, s in items)


class QCVerifier:
    """The helper process, started by Appliance.prepare_to_serve."""

    def __init__(self) -> None:
        self._proc = HelperProcess(HELPER, [json.dumps(sys.path)])
        self._sent = 0
        self.broken: str | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the helper has started, waiting at most `timeout` seconds."""
        if self.broken is not None:
            return False
        started = self._proc.started(timeout)
        if started is False:
            self._fail("it did not start")
        return bool(started)

    def submit(self, items: Sequence[Item]) -> Pending:
        """Have `items` verified: by the helper, but for a last third the appliance
        verifies itself once the policy asks (while the helper finishes its share)."""
        items = list(items)
        if not self.ready() or not _sendable(items):
            return Pending(self, items, None)
        share = items[:len(items) - _kept(len(items))]
        self._sent = (self._sent + 1) & 0xFFFFFFFF
        body = _HEAD.pack(self._sent, len(share)) + b"".join(p + d + s for p, d, s in share)
        try:
            self._proc.send(body)
        except OSError as exc:
            self._fail(f"cannot reach it ({exc.strerror})")
            return Pending(self, items, None)
        return Pending(self, items, self._sent, len(share))

    def _answer(self, number: int) -> bool:
        """True if request `number`'s triples all verify; False otherwise or on any fault."""
        try:
            data = self._proc.receive(_ANSWER.size, ANSWER_TIMEOUT_S)
        except TimeoutError:
            self._fail(f"no answer in {ANSWER_TIMEOUT_S} s")
            return False
        except OSError as exc:
            self._fail(f"cannot read it ({exc.strerror})")
            return False
        if len(data) < _ANSWER.size:
            self._fail("it exited")
            return False
        answered, ok = _ANSWER.unpack(data)
        if answered != number:
            self._fail(f"it answered request {answered}, expected {number}")
            return False
        return ok == 1

    def _fail(self, why: str) -> None:
        """Stop using the helper (and end it): the appliance verifies QCs itself from now
        on."""
        self.broken = why
        log.warning("QC helper process: %s; QC signatures are verified in the appliance "
                    "from now on", why)
        self._proc.kill()
        self._proc.close()

    def close(self) -> None:
        self._proc.close()
        if self.broken is None:
            self.broken = "closed"


class Pending:
    """One QC's signatures, being verified by the helper: a SignatureCheck (qc.verify_qc's
    `check`) that answers from the helper when asked for exactly these triples."""

    def __init__(self, verifier: QCVerifier, items: list[Item], number: int | None,
                 share: int = 0) -> None:
        self._verifier = verifier
        self._items = items
        self._number = number
        self._share = share  # the helper has items[:share]

    def settle(self) -> bool:
        """Collect the helper's answer if not done yet: True if all its triples verify."""
        number, self._number = self._number, None
        if number is None or self._verifier.broken is not None:
            return False
        return self._verifier._answer(number)

    def __call__(self, items: Sequence[Item]) -> list[Exception | None]:
        items = list(items)
        if items == self._items and self._number is not None:
            rest = verify_each(items[self._share:])
            if self.settle() and not any(rest):
                return [None] * len(items)
        self.settle()  # an answer not used is still read: the next one must be its own
        return verify_each(items)  # again, all of them: the first bad one is named
