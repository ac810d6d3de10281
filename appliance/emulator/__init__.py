"""A Blockstream Jade emulator that HWI's own Jade client drives over TCP.

Start one in-process with JadeEmulator(...).start() (see jade.py), or from the
command line with `bft-anchor emulator jade` (cli.py).
"""

from appliance.emulator.confirm import ApproveAll, Prompt, RefuseAll, WaitForButtons
from appliance.emulator.jade import DEFAULT_PORT, JadeEmulator

__all__ = ["ApproveAll", "DEFAULT_PORT", "JadeEmulator", "Prompt", "RefuseAll", "WaitForButtons"]
