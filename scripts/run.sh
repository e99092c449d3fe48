#!/usr/bin/env bash
# The run command (README, "Set up"): Tidings on its embedded default.
#
#   ./scripts/run.sh                       # tidings serve: SQLite in ./tidings-data, no Redis
#   ./scripts/run.sh --config config/single.toml
#
# Creates .venv (reused when present), `pip install -e .` (skipped while
# pyproject.toml is unchanged), installs client_js's npm packages once when npm
# is there (the dashboard draws its charts with uPlot from them; without npm
# /dashboard works without charts), then runs `tidings serve` with the
# arguments given, in the current folder (the data folder is relative to it).
set -euo pipefail

SCRIPT_NAME="run.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_venv
ensure_installed ""
if [[ ! -f "$ROOT/client_js/node_modules/uplot/dist/uPlot.iife.min.js" ]]; then
    if have_bin npm; then
        say "npm ci in client_js (the dashboard's chart library)"
        (cd "$ROOT/client_js" && npm ci --no-audit --no-fund --loglevel=error) >&2
    else
        say "no npm: /dashboard will show its figures without charts (npm ci in client_js)"
    fi
fi
exec "$VENV/bin/tidings" serve "$@"
