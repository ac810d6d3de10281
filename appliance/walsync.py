"""A helper process that fsyncs the journal's WAL, so that the fsync a reservation needs
runs while the signer computes the signature.

A serving appliance commits each reservation without SQLite's own fsync (synchronous
NORMAL: the frames are in the WAL, not yet on disk), asks the helper for an fdatasync of
the WAL, computes the signature, and hands it back only once the helper has answered
that this very request's fsync succeeded (Journal.reserve_while). A process and not a
thread: a Python thread needs the GIL to start the fsync and again to report it, while
the signer holds the GIL between its C calls; on two cores each of those hand-overs
cost more than the overlap saved (bench: appliance_decision).

The protocol: one byte "R" from the helper once it has started (until then SQLite
fsyncs: no signature waits for the helper's start); then one 8-byte request number down
the helper's stdin and, once its fdatasync returned, that number and the fsync's errno
(0: durable) back on its stdout.
"""

from __future__ import annotations

import errno
import logging
import os

from appliance.helperproc import HelperProcess

log = logging.getLogger("bft_anchor.appliance")

# The helper's whole program: no imports beyond the interpreter's own, no site packages.
HELPER = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the appliance's to handle
fd = int(sys.argv[1])
os.write(1, b"R")  # ready
while True:
    request = os.read(0, 8)
    if len(request) != 8:
        break
    try:
        os.fdatasync(fd)
        code = 0
    except OSError as exc:
        code = exc.errno or -1
    os.write(1, request + code.to_bytes(4, "little", signed=True))
"""

REQUEST = 8
REPLY = 12


class WalSyncError(OSError):
    """The WAL's fsync failed or could not be confirmed. `failed` is True when the fsync
    itself reported an error: what it was to write may then never reach the disk, even
    if a later fsync succeeds, so the journal must be reopened (the appliance restarted)."""

    def __init__(self, message: str, failed: bool = False) -> None:
        super().__init__(message)
        self.failed = failed


class WalSyncer:
    """One helper process fsyncing one WAL file (the inode open when it started)."""

    def __init__(self, wal_path: str) -> None:
        fd = os.open(wal_path, os.O_RDONLY)
        try:
            self._proc = HelperProcess(HELPER, [str(fd)], site=False, pass_fds=[fd])
        finally:
            os.close(fd)
        self._sent = 0
        self._warned = False
        self.path = wal_path

    @property
    def pid(self) -> int:
        return self._proc.pid

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the helper has started, waiting at most `timeout` seconds. False for good
        if it exited or said anything else first: the journal then keeps SQLite's fsync."""
        started = self._proc.started(timeout)
        if started is False and not self._warned:
            self._warned = True
            log.warning("the WAL's fsync helper did not start; SQLite fsyncs the journal "
                        "instead")
        return bool(started)

    def request(self) -> int:
        """Ask for an fdatasync of everything written to the WAL so far; returns the
        request's number, for wait()."""
        if not self.ready(5.0):
            raise WalSyncError("the WAL's fsync helper did not start")
        self._sent += 1
        try:
            self._proc.send(self._sent.to_bytes(REQUEST, "little"))
        except OSError as exc:
            raise WalSyncError(f"the WAL's fsync helper is gone ({exc.strerror})") from exc
        return self._sent

    def wait(self, number: int) -> None:
        """Return once request `number`'s fdatasync succeeded; raise WalSyncError if it
        failed, or if the helper's answer is missing or is not that request's."""
        try:
            reply = self._proc.receive(REPLY)
        except OSError as exc:
            raise WalSyncError(f"the WAL's fsync helper is gone ({exc.strerror})") from exc
        if len(reply) < REPLY:
            raise WalSyncError("the WAL's fsync helper exited before answering")
        answered = int.from_bytes(reply[:REQUEST], "little")
        code = int.from_bytes(reply[REQUEST:], "little", signed=True)
        if answered != number:
            raise WalSyncError(f"the WAL's fsync helper answered request {answered}, "
                               f"expected {number}")
        if code:
            name = errno.errorcode.get(code, str(code))
            raise WalSyncError(f"fsync of {self.path} failed ({name}: {os.strerror(code)})",
                               failed=True)

    def close(self) -> None:
        self._proc.close()
