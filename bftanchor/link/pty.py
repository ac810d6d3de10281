"""A pseudo-terminal pair with pyserial on both ends: the serial link without cables.

Tests and the devnet join a node to its appliance this way. The slave end has
a path (/dev/pts/N) that anyone can open with serial.Serial(path). The master
end has no path (opening /dev/ptmx makes a new pty), so PtyMasterSerial adopts
the master file descriptor into a real pyserial posix Serial: reads, writes,
in_waiting and timeouts then behave exactly as on the slave side.

Both ends are put in raw mode (tty.setraw) so no byte is translated or echoed.
The master object also holds the slave descriptor open: on Linux, once every
descriptor of the slave is closed the master reads fail with EIO (hangup), so
holding one keeps the master usable while the process on the slave side
restarts. A child process can be given the master end by passing its fd
(subprocess pass_fds) and opening it with open_serial("fd:<n>").
"""

from __future__ import annotations

import fcntl
import os
import tty

import serial


class PtyMasterSerial(serial.Serial):
    """pyserial's posix Serial over an already open pty master descriptor."""

    def __init__(
        self, master_fd: int, *, hold_fd: int | None = None, timeout: float | None = None
    ) -> None:
        self._adopt_fd = master_fd
        self._hold_fd = hold_fd
        super().__init__(None, timeout=timeout)  # port None: the base does not open
        self.port = f"pty-master-fd:{master_fd}"
        self.open()

    def open(self) -> None:
        # Mirrors serialposix.Serial.open() minus os.open(): adopt the fd.
        if self.is_open:
            raise serial.SerialException("Port is already open.")
        self.fd = self._adopt_fd
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.pipe_abort_read_r, self.pipe_abort_read_w = os.pipe()
        self.pipe_abort_write_r, self.pipe_abort_write_w = os.pipe()
        fcntl.fcntl(self.pipe_abort_read_r, fcntl.F_SETFL, os.O_NONBLOCK)
        fcntl.fcntl(self.pipe_abort_write_r, fcntl.F_SETFL, os.O_NONBLOCK)
        self._reconfigure_port(force_update=True)  # raw mode, as for any port
        self.is_open = True

    def close(self) -> None:
        super().close()  # closes the master fd and the abort pipes
        if self._hold_fd is not None:
            try:
                os.close(self._hold_fd)
            except OSError:
                pass
            self._hold_fd = None


def open_pty_pair(timeout: float | None = 0.05) -> tuple[PtyMasterSerial, str]:
    """A raw pty pair: (the master end as a pyserial Serial, the slave's path).

    Open the slave end with serial.Serial(path) or open_serial(path). Close the
    master object to tear the pair down.
    """
    master_fd, slave_fd = os.openpty()
    try:
        tty.setraw(master_fd)
        tty.setraw(slave_fd)
        slave_path = os.ttyname(slave_fd)
        master = PtyMasterSerial(master_fd, hold_fd=slave_fd, timeout=timeout)
    except BaseException:
        os.close(master_fd)
        os.close(slave_fd)
        raise
    return master, slave_path
