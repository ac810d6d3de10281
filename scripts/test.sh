#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then the whole suite against real parts.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
VENV="${BFT_ANCHOR_VENV:-.venv}"
"$VENV/bin/ruff" check bftanchor appliance anchornode anchorcli anchorharness tui tests bench
"$VENV/bin/lint-imports"
exec "$VENV/bin/python" -m pytest -q "$@"
