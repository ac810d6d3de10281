"""`bft-anchor emulator jade`: run the Jade emulator as a foreground TCP server.

main(argv) takes the arguments after `emulator jade` and returns an exit code;
anchorcli/main.py wires it into the top-level command.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from appliance.emulator.jade import DEFAULT_HOST, DEFAULT_PORT, JadeEmulator
from bftanchor.usage import ArgumentParser, InputError, read_text, tcp_port

DESCRIPTION = """\
Serve a Blockstream Jade emulator over TCP for HWI (device path tcp:HOST:PORT).
HWI finds it with `hwi --emulators enumerate` when it listens on the default
127.0.0.1:30121. The wallet comes from --mnemonic-file, else from --state;
registered multisig wallets and the network pin persist in --state.
"""

EPILOG = """\
examples:
  bft-anchor emulator jade --mnemonic-file seed.txt --network localtest
  bft-anchor emulator jade --state jade.json --port 0 --require-registration
  hwi --emulators --chain regtest enumerate
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bft-anchor emulator jade", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=tcp_port, default=DEFAULT_PORT,
                        help=f"TCP port; 0 picks a free one (default {DEFAULT_PORT}, "
                             "the port HWI probes for a Jade emulator)")
    parser.add_argument("--mnemonic-file", type=Path, metavar="F",
                        help="file holding the BIP39 mnemonic (first line); an optional "
                             "second line is the BIP39 passphrase")
    parser.add_argument("--state", type=Path, metavar="F",
                        help="JSON state file (wallet, network pin, registered multisigs); "
                             "loaded at start and rewritten on every change")
    parser.add_argument("--require-registration", action="store_true",
                        help="refuse to sign a multisig input unless a registered multisig "
                             "wallet builds its script (stricter than the firmware)")
    parser.add_argument("--confirm", choices=("approve", "refuse", "wait"), default="approve",
                        help="how device prompts are answered: approve all, refuse all, or "
                             "wait for a button press on standard input (default approve)")
    parser.add_argument("--network", choices=("testnet", "mainnet", "localtest"),
                        help="pin the wallet to this network type (testnet and localtest "
                             "are both TEST); requests for the other type fail with "
                             "NETWORK_MISMATCH. Default: pinned by the first auth_user")
    parser.add_argument("--allow-large-scripts", action="store_true",
                        help="sign scripts over the firmware's 520-byte limit (wsh multisig "
                             "of 16-20 keys); a real Jade refuses these")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def _read_mnemonic(path: Path) -> tuple[str, str | None]:
    lines = read_text(path, "--mnemonic-file").splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"--mnemonic-file {path}", "no mnemonic on the first line")
    passphrase = lines[1] if len(lines) > 1 and lines[1] else None
    return lines[0].strip(), passphrase


def _console_buttons(emulator: JadeEmulator) -> None:
    """--confirm wait: ask on the terminal for every prompt (a person at the device)."""
    from appliance.emulator.confirm import WaitForButtons

    hook = emulator.confirm_hook
    assert isinstance(hook, WaitForButtons)
    while True:
        try:
            prompt = hook.next_prompt(timeout=3600)
        except TimeoutError:
            continue
        print(f"\n[jade] {prompt.kind}: {prompt.details}", file=sys.stderr)
        answer = input("[jade] approve? [y/N] ").strip().lower()
        prompt.approve() if answer in ("y", "yes") else prompt.refuse()


MODELS = ("jade",)


def main(argv: list[str] | None = None) -> int:
    """`bft-anchor emulator [jade] ...`: the model word is optional (Jade is the only one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MODELS:
        argv = argv[1:]
    parser = build_parser()
    if argv and argv[0] == "jade":  # `bft-anchor emulator jade ...`: the device family
        argv = argv[1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    mnemonic = passphrase = None
    if args.mnemonic_file is not None:
        mnemonic, passphrase = _read_mnemonic(args.mnemonic_file)
    try:
        emulator = JadeEmulator(args.host, args.port, mnemonic=mnemonic, passphrase=passphrase,
                                state_path=args.state, network=args.network,
                                confirm=args.confirm,
                                require_registration=args.require_registration,
                                firmware_script_limit=not args.allow_large_scripts)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"--state {args.state}" if args.state else None, reason) from None
    try:
        port = emulator.start()
    except OSError as exc:
        raise InputError(f"--host/--port {args.host}:{args.port}",
                         exc.strerror or str(exc)) from None

    print(f"Jade emulator on tcp:{args.host}:{port} fingerprint={emulator.fingerprint}",
          file=sys.stderr, flush=True)
    if args.confirm == "wait":
        threading.Thread(target=_console_buttons, args=(emulator,), daemon=True).start()

    stopped = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
