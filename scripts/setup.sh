#!/usr/bin/env bash
# Install what bft-anchor needs on a fresh Debian machine: a PoW node (litecoind
# from Debian; bitcoind is used instead when it is already on PATH) and a Python
# virtual environment with the project and its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BFT_ANCHOR_VENV:-.venv}"

if ! command -v litecoind >/dev/null && ! command -v bitcoind >/dev/null; then
    echo "setup: installing litecoind" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq litecoind libusb-1.0-0 >/dev/null
fi
# HWI's enumerate probes USB through libusb; without it `hwi enumerate` crashes.
if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
fi
if ! command -v tmux >/dev/null && [ "${BFT_ANCHOR_NO_TMUX:-}" = "" ]; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null 2>&1 || true
    fi
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV" >&2
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q -e ".[test]"
echo "setup: ready ($("$VENV/bin/python" --version), $(command -v litecoind || command -v bitcoind))" >&2
