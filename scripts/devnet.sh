#!/usr/bin/env bash
# The main job: set up (idempotent), then run the devnet. Arguments go to `bft-anchor devnet`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec "${BFT_ANCHOR_VENV:-.venv}/bin/bft-anchor" devnet "$@"
