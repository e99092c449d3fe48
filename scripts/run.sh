#!/usr/bin/env bash
# The run command (README, "Set up"): Tidings on its embedded default.
#
#   ./scripts/run.sh                       # tidings serve: SQLite in ./tidings-data, no Redis
#   ./scripts/run.sh --config config/single.toml
#
# Creates .venv (reused when present), `pip install -e .` (skipped while
# pyproject.toml is unchanged), then runs `tidings serve` with the arguments
# given, in the current folder (the data folder is relative to it).
set -euo pipefail

SCRIPT_NAME="run.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_venv
ensure_installed ""
exec "$VENV/bin/tidings" serve "$@"
